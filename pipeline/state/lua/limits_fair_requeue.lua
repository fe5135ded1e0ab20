-- Hand a run out again later (before the job's cursor), e.g. after its submit was refused.
-- KEYS as in limits_fair_push.lua; ARGV[1] job id, ARGV[2] index
-- Returns 1 when the run is queued again, 0 when not: the job is unknown or was removed
-- (a cancelled job stays cancelled), the index was never handed out, or it is queued already.
local job, index = ARGV[1], tonumber(ARGV[2])
local h = redis.call('HMGET', KEYS[2], job .. '|next', job .. '|queued')
local next_index = tonumber(h[1])
if not next_index or not index or index < 0 or index >= next_index then
  return 0
end
local list = redis.call('HGET', KEYS[3], job)
local entry = string.format('%d', index)
if list and string.find(' ' .. list .. ' ', ' ' .. entry .. ' ', 1, true) then
  return 0
end
redis.call('HSET', KEYS[3], job, list and (list .. ' ' .. entry) or entry)
if h[2] ~= '1' then
  redis.call('RPUSH', KEYS[1], job)
  redis.call('HSET', KEYS[2], job .. '|queued', 1)
end
return 1
