-- A lost answer that was not found: the run may be submitted again. Its record stays, as a
-- tombstone under its own member, for as long as submit records are kept: the prediction it
-- may have made (listed late, say) is still its own, and no other lost answer may take it.
-- KEYS[1] submit records, KEYS[2] their starts, KEYS[3] submits on the wire of the job
-- ARGV[1] the run's member, ARGV[2] the tombstone's member, ARGV[3] run index
-- Returns 1, or 0 when the run had no lost record.
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then
  return 0
end
local record = cjson.decode(raw)
record.state = 'gave_up'
redis.call('HSET', KEYS[1], ARGV[2], cjson.encode(record))
redis.call('ZADD', KEYS[2], record.start_ms, ARGV[2])
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[3])
return 1
