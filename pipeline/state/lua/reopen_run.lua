-- Reopen a finished run so `resume` can run it again: forget its result and take it out
-- of the counters, atomically. Succeeded and skipped runs are never reopened.
-- KEYS[1] job hash, KEYS[2] results hash, KEYS[3] submit-attempts hash; ARGV[1] run index,
-- ARGV[2] the counter it was counted in (failed).
-- Returns 1 when reopened, 0 when it was not finished as ARGV[2].
-- The job's count of its failures by error_kind (`failed|<kind>`, finish_run.lua) drops too.
local raw = redis.call('HGET', KEYS[2], ARGV[1])
if not raw then
  return 0
end
redis.call('HDEL', KEYS[2], ARGV[1])
local kind = cjson.decode(raw).error_kind
if type(kind) == 'string' and kind ~= '' then
  redis.call('HINCRBY', KEYS[1], 'failed|' .. kind, -1)
end
redis.call('HDEL', KEYS[3], ARGV[1])
redis.call('HINCRBY', KEYS[1], ARGV[2], -1)
redis.call('HINCRBY', KEYS[1], 'finished', -1)
return 1
