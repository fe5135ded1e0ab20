-- The fleet-wide throttle. KEYS[1] the throttle hash (see throttle_state in limits_lib.lua),
-- KEYS[2] (optional) the account's counts hash, whose `rate_limited` counts every 'cut'.
-- ARGV[1] operation, ARGV[2] recovery (us); for 'cut' also ARGV[3] pause (us),
-- ARGV[4] decrease (multiplier), ARGV[5] floor.
--   'cut'  a 429 was seen: pause everyone until now + pause (never shortening a pause in
--          force) and multiply the factor by `decrease`, once per pause: 429s that arrive
--          while paused answer submits made before the pause, so they extend it but do not
--          cut again;
--   'read' nothing changes.
-- Returns {pause left (us), factor (parts per million)}.
local now = now_us()
local recovery = tonumber(ARGV[2])
local pause, factor = throttle_state(KEYS[1], now, recovery)
if ARGV[1] == 'cut' then
  local paused_until = now + math.max(pause, tonumber(ARGV[3]))
  if pause == 0 then
    factor = math.max(tonumber(ARGV[5]), factor * tonumber(ARGV[4]))
  end
  redis.call('HSET', KEYS[1], 'until', int(paused_until), 'factor', tostring(factor),
    'since', int(paused_until))
  -- Once fully recovered the hash says nothing a missing one would not.
  redis.call('PEXPIRE', KEYS[1], math.ceil((paused_until - now + recovery) / 1000) + 1000)
  pause = paused_until - now
  if KEYS[2] then
    redis.call('HINCRBY', KEYS[2], 'rate_limited', 1)
  end
elseif ARGV[1] ~= 'read' then
  return redis.error_reply('unknown throttle operation ' .. tostring(ARGV[1]))
end
return {math.ceil(pause), math.floor(factor * 1000000 + 0.5)}
