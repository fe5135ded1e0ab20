-- Forget a run's failed prediction so that the run can be started again (a transient
-- failure: the provider did not bill it), once per failed prediction, and count it.
-- KEYS[1] job hash, KEYS[2] results hash (index -> result line), KEYS[3] prediction ids
-- (index -> id), KEYS[4] failed predictions per run (index -> count), KEYS[5] the run's start
-- claim: held by nobody but the start that submitted the failed prediction (a run with a
-- prediction is never claimed again), which is over, so it goes too and the next start is
-- not kept waiting for it to expire
-- ARGV[1] run index, ARGV[2] the failed prediction's id, ARGV[3] how many failed predictions
-- a run may have and still be started again
-- Returns the run's failed predictions counted so far, this one included:
--   0          nothing changed: the job has no record, the run has a result, or its recorded
--              prediction is no longer this one (another check of the run did this already)
--   1..ARGV[3] the prediction id and the claim are cleared: the run's next start submits it
--   more       the run has failed too often: the id is kept, and the caller fails the run
if redis.call('HEXISTS', KEYS[1], 'total') == 0 or redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then
  return 0
end
if redis.call('HGET', KEYS[3], ARGV[1]) ~= ARGV[2] then
  return 0
end
local failed = redis.call('HINCRBY', KEYS[4], ARGV[1], 1)
if failed <= tonumber(ARGV[3]) then
  redis.call('HDEL', KEYS[3], ARGV[1])
  redis.call('DEL', KEYS[5])
end
return failed
