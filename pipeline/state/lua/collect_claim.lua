-- Claim a completed prediction's collection, unless its run has finished already.
-- A webhook and a poll can both see the same prediction done: one collects, once.
-- KEYS[1] results hash (index -> result line), KEYS[2] the run's collect claim,
-- KEYS[3] planned runs (index -> JSON)
-- ARGV[1] run index, ARGV[2] the claim's time to live in seconds (a collector that dies lets
-- the next check collect after it), ARGV[3] '1' to return the planned run's JSON as well
-- Returns {'finished'}, {'taken'} (another collector holds the claim) or {'claimed', run}
-- (run is '' unless ARGV[3] asked for it).
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then
  return {'finished'}
end
if not redis.call('SET', KEYS[2], '1', 'NX', 'EX', tonumber(ARGV[2])) then
  return {'taken'}
end
local run = ''
if ARGV[3] == '1' then
  run = redis.call('HGET', KEYS[3], ARGV[1]) or ''
end
return {'claimed', run}
