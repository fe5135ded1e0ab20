-- Take up to ARGV[1] predictions whose next check is due, for one poller.
-- KEYS[1] the due index (sorted set: member "job|index|attempt|failures", score = due time in
-- Redis seconds); ARGV[1] how many, ARGV[2] lease in seconds.
-- Taken members are pushed ARGV[2] seconds into the future rather than removed: if their
-- poller dies, they come due again by themselves.
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local items = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
local lease = now + tonumber(ARGV[2])
for _, member in ipairs(items) do
  redis.call('ZADD', KEYS[1], lease, member)
end
return items
