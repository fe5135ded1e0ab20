-- Forget a job (cancelled or finished): none of its runs is handed out any more.
-- KEYS as in limits_fair_push.lua; ARGV[1] job id. Returns 1 if the job was known, else 0.
local job = ARGV[1]
redis.call('LREM', KEYS[1], 0, job)
redis.call('HDEL', KEYS[3], job)
return redis.call('HDEL', KEYS[2], job .. '|count', job .. '|next', job .. '|weight',
  job .. '|used', job .. '|queued', job .. '|pushed') > 0 and 1 or 0
