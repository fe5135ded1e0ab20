-- A webhook event's mark: taken while one delivery handles it, "done" once it was handled.
-- KEYS[1] the event's mark, KEYS[2] its prediction's mark; ARGV[1] operation, ARGV[2] token
--   'begin' ARGV[3] milliseconds: 'seen' when the event, or its prediction, was handled,
--           'busy' when another delivery handles the event now, else 'new' (the event's
--           mark holds the token for ARGV[3] ms);
--   'done'  ARGV[3] seconds: the event's mark says "done" for that long (whoever held it),
--           and so does the prediction's when ARGV[4] is '1' (it was collected);
--   'drop'  the event's mark is removed if the token still holds it (handling failed: the
--           provider's retry of it is new again).
local mark = redis.call('GET', KEYS[1])
if ARGV[1] == 'begin' then
  if mark == 'done' or redis.call('EXISTS', KEYS[2]) == 1 then
    return 'seen'
  end
  if mark then
    return 'busy'
  end
  redis.call('SET', KEYS[1], ARGV[2], 'PX', tonumber(ARGV[3]))
  return 'new'
elseif ARGV[1] == 'done' then
  redis.call('SET', KEYS[1], 'done', 'EX', tonumber(ARGV[3]))
  if ARGV[4] == '1' then
    redis.call('SET', KEYS[2], 'done', 'EX', tonumber(ARGV[3]))
  end
  return 'done'
elseif ARGV[1] == 'drop' then
  if mark == ARGV[2] then
    redis.call('DEL', KEYS[1])
  end
  return 'dropped'
end
return redis.error_reply('unknown webhook event operation ' .. tostring(ARGV[1]))
