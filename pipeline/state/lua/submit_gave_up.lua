-- A lost answer that was not found: the run may be submitted again. Its record stays as a
-- tombstone: the prediction it may have made (listed late, say) is still its own, and no
-- other lost answer may take it. Tombstones are trimmed by submit_on_wire.lua once no
-- submit record still open started before their window ended.
-- KEYS[1] submit records, KEYS[2] their starts, KEYS[3] submits on the wire of the job,
-- KEYS[4] tombstones, KEYS[5] their windows' ends
-- ARGV[1] the run's member, ARGV[2] the tombstone's member, ARGV[3] run index
-- Returns 1, or 0 when the run had no record.
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then
  return 0
end
local record = cjson.decode(raw)
record.state = 'gave_up'
local ends = record.end_ms or record.deadline_ms
redis.call('HSET', KEYS[4], ARGV[2], cjson.encode(record))
redis.call('ZADD', KEYS[5], ends, ARGV[2])
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[3])
return 1
