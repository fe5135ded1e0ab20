-- Hand out the next run, round robin across jobs: the job at the head of the ring gets up to
-- `weight` runs in a row, then goes to the back. A job's requeued runs come before its cursor.
-- A job with nothing left leaves the ring (a requeue brings it back).
-- KEYS as in limits_fair_push.lua. Returns {job id, index}, or nil when no job has runs left.
-- Optional KEYS[4] (a sorted set) and ARGV: [1] seconds, [2] the member's format (Python's
-- ``Due``: job, index, attempt, failures, submitted time, seen time), [3] attempt, [4] failures. The run
-- handed out is added to the set as that member, submitted now, due ARGV[1] seconds from now,
-- in the same step: whoever pops a run and dies before settling it leaves a mark that brings
-- it back.
local ring, jobs, requeued = KEYS[1], KEYS[2], KEYS[3]

local function mark(job, index)
  if KEYS[4] then
    local t = redis.call('TIME')
    local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
    local member = string.format(ARGV[2], job, index, tonumber(ARGV[3]), tonumber(ARGV[4]), now, now)
    redis.call('ZADD', KEYS[4], now + tonumber(ARGV[1]), member)
    return member
  end
  return nil
end

local function take_requeued(job)
  local list = redis.call('HGET', requeued, job)
  if not list then
    return nil
  end
  local first, rest = string.match(list, '^(%d+) ?(.*)$')
  if rest == '' then
    redis.call('HDEL', requeued, job)
  else
    redis.call('HSET', requeued, job, rest)
  end
  return tonumber(first)
end

local function take_next(job)
  local h = redis.call('HMGET', jobs, job .. '|next', job .. '|count')
  local index, count = tonumber(h[1]), tonumber(h[2])
  if not count or index >= count then
    return nil
  end
  redis.call('HINCRBY', jobs, job .. '|next', 1)
  return index
end

for _ = 1, redis.call('LLEN', ring) do
  local job = redis.call('LINDEX', ring, 0)
  local index = take_requeued(job) or take_next(job)
  if index then
    local used = redis.call('HINCRBY', jobs, job .. '|used', 1)
    if used >= tonumber(redis.call('HGET', jobs, job .. '|weight') or 1) then
      redis.call('HSET', jobs, job .. '|used', 0)
      redis.call('RPUSH', ring, redis.call('LPOP', ring))
    end
    local member = mark(job, index)
    if member then
      return {job, index, member}
    end
    return {job, index}
  end
  redis.call('LPOP', ring)
  if redis.call('HEXISTS', jobs, job .. '|count') == 1 then
    redis.call('HSET', jobs, job .. '|queued', 0, job .. '|used', 0)
  end
end
return nil
