-- Schedule checks: for each pair (member, delay in seconds) in ARGV, remove the member named
-- in KEYS-free ARGV[1] list and add the new one due `delay` seconds from Redis' now.
-- KEYS[1] the due index. ARGV: n_remove, removed members..., then pairs (member, delay).
-- Returns the seconds until the earliest item of the index is due (-1 when it is empty).
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local n_remove = tonumber(ARGV[1])
for i = 2, n_remove + 1 do
  redis.call('ZREM', KEYS[1], ARGV[i])
end
for i = n_remove + 2, #ARGV, 2 do
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[i + 1]), ARGV[i])
end
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if #first == 0 then
  return '-1'
end
return tostring(math.max(0, tonumber(first[2]) - now))
