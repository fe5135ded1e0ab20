-- Record a submit as on the wire, account-wide, just before its request is sent: from now
-- until its answer is recorded (submit_answered.lua) or it is known to have created nothing,
-- any prediction created after its start may be its own, and no lost answer may take it.
-- KEYS[1] submit records (member -> JSON), KEYS[2] their starts (member -> ms),
-- KEYS[3] known prediction ids (id -> owner), KEYS[4] when each was recorded (id -> ms),
-- KEYS[5] tombstones (member -> JSON), KEYS[6] their windows' ends (member -> ms)
-- ARGV[1] the run's member, ARGV[2] its record (JSON: job, index, attempt, model),
-- ARGV[3] ms after its start by which the submit has created its prediction or never will,
-- ARGV[4] ms known ids are kept at least (and before the oldest submit record),
-- ARGV[5] ms after which nothing is kept (the provider lists 7 days)
-- Returns the start (Redis time, ms). Trims, a bounded number at a time: submit records
-- older than ARGV[5]; known ids and tombstones recorded or ended before both ARGV[4] ago and
-- ARGV[4] before the oldest open submit record (a lost answer looks for predictions created
-- after its own start, so older ones can no longer be taken for its own).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local record = cjson.decode(ARGV[2])
record.start_ms = now
record.deadline_ms = now + tonumber(ARGV[3])
record.state = 'wire'
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(record))
redis.call('ZADD', KEYS[2], now, ARGV[1])
local retention = tonumber(ARGV[5])
for _, old in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now - retention, 'LIMIT', 0, 100)) do
  redis.call('HDEL', KEYS[1], old)
  redis.call('ZREM', KEYS[2], old)
end
local keep = tonumber(ARGV[4])
local floor = now - keep
local oldest = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
if oldest[2] then
  floor = math.min(floor, tonumber(oldest[2]) - keep)
end
floor = math.max(floor, now - retention)
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', floor, 'LIMIT', 0, 200)) do
  redis.call('HDEL', KEYS[3], id)
  redis.call('ZREM', KEYS[4], id)
end
for _, tomb in ipairs(redis.call('ZRANGEBYSCORE', KEYS[6], '-inf', floor, 'LIMIT', 0, 100)) do
  redis.call('HDEL', KEYS[5], tomb)
  redis.call('ZREM', KEYS[6], tomb)
end
return now
