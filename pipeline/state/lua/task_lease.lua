-- A long-running task's lease (a pump's, the poller's), changed only by its holder.
-- KEYS[1] the lease (its value: the holder's token); ARGV[1] operation, ARGV[2] token
--   'take' ARGV[3] milliseconds: hold the lease for the token, new or (already the token's)
--          extended; 1 when held, 0 when another token holds it;
--   'drop' remove the lease if the token holds it; 1 when removed, else 0.
local holder = redis.call('GET', KEYS[1])
if ARGV[1] == 'take' then
  if holder and holder ~= ARGV[2] then
    return 0
  end
  redis.call('SET', KEYS[1], ARGV[2], 'PX', tonumber(ARGV[3]))
  return 1
elseif ARGV[1] == 'drop' then
  if holder ~= ARGV[2] then
    return 0
  end
  redis.call('DEL', KEYS[1])
  return 1
end
return redis.error_reply('unknown lease operation ' .. tostring(ARGV[1]))
