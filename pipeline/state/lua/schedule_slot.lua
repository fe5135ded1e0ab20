-- The last cron time of a schedule that beat has handled (started, or skipped as too late),
-- moved forward only: two beats, or one beat's repeated tick, never handle one time twice.
-- KEYS[1] the schedule's slot hash (ep:schedule:<name>:slot: at = epoch seconds, cron = its cron|timezone)
-- ARGV[1] the time to handle (epoch seconds)
-- ARGV[2] the schedule's cron|timezone
-- ARGV[3] 'claim': take the time if it is later than the one handled under the same cron;
--         'baseline': record it as handled only if nothing is handled under this cron yet
--         (a new schedule, or a changed cron, starts from now: it has missed nothing)
-- Returns 1 when this call recorded the time, 0 when it was handled already.
local at = tonumber(ARGV[1])
local current = redis.call('HMGET', KEYS[1], 'at', 'cron')
local same = current[1] and current[2] == ARGV[2]
if ARGV[3] == 'baseline' then
  if same then
    return 0
  end
elseif not same or tonumber(current[1]) >= at then
  return 0
end
redis.call('HSET', KEYS[1], 'at', ARGV[1], 'cron', ARGV[2])
return 1
