-- Register a job whose runs are the indices 0..count-1, without one entry per run.
-- KEYS[1] ring (list of job ids that have runs left, in turn order), KEYS[2] jobs hash
-- (fields `<job>|count`, `|next` cursor, `|weight`, `|used` turns taken this round, `|queued`
-- 1 while in the ring, `|pushed` when it was registered: Redis time, s), KEYS[3] requeued hash
-- (job -> space-separated indices)
-- ARGV[1] job id, ARGV[2] count, ARGV[3] weight (runs per turn), ARGV[4] (optional) the
-- runs already handed out: the cursor starts there (a resumed job's runs come by requeue)
-- Returns 1 when registered, 0 when the job was already known (nothing changes, so a
-- redelivered enqueue cannot hand runs out twice).
local job = ARGV[1]
if redis.call('HEXISTS', KEYS[2], job .. '|count') == 1 then
  return 0
end
local cursor = tonumber(ARGV[4] or '0')
local queued = tonumber(ARGV[2]) > cursor and 1 or 0
local t = redis.call('TIME')
redis.call('HSET', KEYS[2], job .. '|count', ARGV[2], job .. '|next', cursor, job .. '|weight', ARGV[3],
  job .. '|used', 0, job .. '|queued', queued, job .. '|pushed', t[1] .. '.' .. string.format('%06d', t[2]))
if queued == 1 then
  redis.call('RPUSH', KEYS[1], job)
end
return 1
