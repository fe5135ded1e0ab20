-- Release at once everything the processes of a dead run held, for a Redis no live process
-- uses (the caller proves it): leases, kick marks, claims and locks are dropped, and every
-- member of the due index scheduled later than now is due now (the poller that took it, or
-- the pump whose start check it is, died with the rest).
-- KEYS[1] the due index; ARGV key patterns (SCAN MATCH) whose keys are dropped
-- Returns {keys dropped, due members brought forward}
local dropped = 0
for _, pattern in ipairs(ARGV) do
  local cursor = '0'
  repeat
    local reply = redis.call('SCAN', cursor, 'MATCH', pattern, 'COUNT', 1000)
    cursor = reply[1]
    for _, key in ipairs(reply[2]) do
      dropped = dropped + redis.call('DEL', key)
    end
  until cursor == '0'
end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local later = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. string.format('%.6f', now), '+inf')
for _, member in ipairs(later) do
  redis.call('ZADD', KEYS[1], now, member)
end
return {dropped, #later}
