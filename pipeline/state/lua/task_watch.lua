-- The watchdog's look (workers/watchdog.py): which long-running task must be started because
-- work waits and nobody holds its lease, read and marked in one step, so that of the many
-- watchdogs of a fleet only one sends each start.
-- KEYS[1] the fair queue's ring (job ids with runs left), KEYS[2] the due index, KEYS[3] the
-- jobs waiting to be finalized (sorted set by Redis time), KEYS[4] and KEYS[5] the poller's
-- lease and kick mark, then a lease and a kick mark per pump slot (slot 0 first).
-- ARGV[1] a kick mark's life in ms, ARGV[2] seconds ahead that a due member counts as waiting,
-- ARGV[3] seconds after its last run that an unfinalized job counts as lost, ARGV[4] the kick
-- mark prefix of a job's finalize (+ job id), ARGV[5] that mark's life in ms, ARGV[6] the most
-- jobs returned.
-- A start is due when its lease is not held and no kick mark says a start is on its way;
-- the mark is set here (SET NX PX) and cleared by the task as it starts.
-- Returns {poller 1|0, {pump slots to start}, {job ids to finalize}}.
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local kick_ms = tonumber(ARGV[1])

local function start(lease, kick)
  if redis.call('EXISTS', lease) == 1 then
    return false
  end
  return redis.call('SET', kick, '1', 'NX', 'PX', kick_ms) ~= false
end

local poller = 0
local first = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
if #first > 0 and tonumber(first[2]) <= now + tonumber(ARGV[2]) and start(KEYS[4], KEYS[5]) then
  poller = 1
end

local pumps = {}
if redis.call('LLEN', KEYS[1]) > 0 then
  for i = 6, #KEYS, 2 do
    if start(KEYS[i], KEYS[i + 1]) then
      table.insert(pumps, (i - 6) / 2)
    end
  end
end

local finalize = {}
local stale = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now - tonumber(ARGV[3]), 'LIMIT', 0, tonumber(ARGV[6]))
for _, job in ipairs(stale) do
  if redis.call('SET', ARGV[4] .. job, '1', 'NX', 'PX', tonumber(ARGV[5])) then
    table.insert(finalize, job)
  end
end
return {poller, pumps, finalize}
