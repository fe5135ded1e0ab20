-- Concurrency leases. KEYS[1] the sorted set holder -> expiry (us on the Redis clock).
-- ARGV[1] operation:
--   'acquire' ARGV[2] holder, ARGV[3] limit, ARGV[4] lease (us): 1 if the holder now holds a
--             lease (new, or its existing one renewed), 0 if every slot is taken;
--   'renew'   ARGV[2] lease (us), ARGV[3..] holders: how many still-live leases were renewed
--             (an expired lease is never brought back: its slot may be someone else's now);
--   'count'   the number of live leases.
local now = now_us()
local op = ARGV[1]
if op == 'acquire' then
  if lease_wait(KEYS[1], ARGV[2], tonumber(ARGV[3]), now) > 0 then
    return 0
  end
  lease_take(KEYS[1], ARGV[2], now, tonumber(ARGV[4]))
  return 1
elseif op == 'renew' then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', int(now))
  local lease_us = tonumber(ARGV[2])
  local renewed = 0
  for i = 3, #ARGV do
    if redis.call('ZSCORE', KEYS[1], ARGV[i]) then
      redis.call('ZADD', KEYS[1], int(now + lease_us), ARGV[i])
      renewed = renewed + 1
    end
  end
  if renewed > 0 then
    redis.call('PEXPIRE', KEYS[1], math.ceil(lease_us / 1000) + 1000)
  end
  return renewed
elseif op == 'count' then
  return redis.call('ZCOUNT', KEYS[1], '(' .. int(now), '+inf')
end
return redis.error_reply('unknown lease operation ' .. tostring(op))
