-- Add runs to an existing job (a rejected run regenerated as a new variant), each as the
-- job's next run index, and reopen the job when it had finished, in one step.
-- KEYS[1] job hash, KEYS[2] planned runs hash (index -> run JSON), KEYS[3] regenerated hash
-- (source run index -> the index of the run added for it), KEYS[4] added run keys hash
-- (run key -> index), KEYS[5] the to-finalize sorted set.
-- ARGV: pairs of (source run index, run JSON without a meaningful index).
-- A source already regenerated adds nothing (two reviewers clicking at once pay once); a run
-- whose key was added before adds nothing either (the caller picks another variant).
-- Returns, per pair, {status, index}: status 'added' (index: the new run's), 'already' (index:
-- the run added for that source before) or 'taken' (the run key is another added run's).
-- -2 alone when the job has no record.
if redis.call('HEXISTS', KEYS[1], 'total') == 0 then
  return -2
end
local out = {}
local added = 0
for i = 1, #ARGV, 2 do
  local source = ARGV[i]
  local before = redis.call('HGET', KEYS[3], source)
  if before then
    out[#out + 1] = {'already', tonumber(before)}
  else
    local run = cjson.decode(ARGV[i + 1])
    local taken = redis.call('HGET', KEYS[4], run['run_key'])
    if taken then
      out[#out + 1] = {'taken', tonumber(taken)}
    else
      local index = redis.call('HINCRBY', KEYS[1], 'total', 1) - 1
      run['index'] = index
      redis.call('HSET', KEYS[2], index, cjson.encode(run))
      redis.call('HSET', KEYS[3], source, index)
      redis.call('HSET', KEYS[4], run['run_key'], index)
      out[#out + 1] = {'added', index}
      added = added + 1
    end
  end
end
if added > 0 then
  local status = redis.call('HGET', KEYS[1], 'status')
  if status ~= 'queued' and status ~= 'running' then
    -- Finished: runnable again, as `resume` makes it (its stop lifted, its budget kept).
    redis.call('HDEL', KEYS[1], 'stop_reason', 'cancel_requested', 'budget_exhausted')
    redis.call('HSET', KEYS[1], 'status', 'running', 'finished_at', '', 'error', '')
  end
  -- Finalized or not, the job is not done until its new runs are: take it off the
  -- to-finalize list (the last new run's finish puts it back).
  redis.call('ZREM', KEYS[5], redis.call('HGET', KEYS[1], 'id'))
end
return out
