-- Give a run whose submit answer was lost the prediction found for it, only if the run is
-- still looking (no result, no prediction, its record lost) and no run knows that id.
-- KEYS[1] prediction ids (index -> id), KEYS[2] submits on the wire of the job (index -> 1),
-- KEYS[3] submit records, KEYS[4] their starts, KEYS[5] known ids, KEYS[6] when recorded,
-- KEYS[7] results (index -> line)
-- ARGV[1] run index, ARGV[2] the run's member, ARGV[3] prediction id, ARGV[4] its owner
-- Returns 'adopted', or why not: 'finished', 'submitted', 'known' or 'not_lost'.
if redis.call('HEXISTS', KEYS[7], ARGV[1]) == 1 then
  return 'finished'
end
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then
  return 'submitted'
end
if redis.call('HEXISTS', KEYS[5], ARGV[3]) == 1 then
  return 'known'
end
local raw = redis.call('HGET', KEYS[3], ARGV[2])
if not raw or cjson.decode(raw).state ~= 'lost' then
  return 'not_lost'
end
record_known(KEYS[1], KEYS[2], KEYS[5], KEYS[6], ARGV[1], ARGV[3], ARGV[4])
redis.call('HDEL', KEYS[3], ARGV[2])
redis.call('ZREM', KEYS[4], ARGV[2])
return 'adopted'
