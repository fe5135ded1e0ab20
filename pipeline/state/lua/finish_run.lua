-- Finish one run of a job, exactly once, and charge its ledger line exactly once.
-- KEYS[1] job hash, KEYS[2] results hash (index -> result line), KEYS[3] ledger hash
-- (entry id -> ledger line), KEYS[4] reservations hash (index -> "micros|day"),
-- KEYS[5] jobs waiting to be finalized (sorted set by Redis time): the last run's finish
-- puts its job there in the same step, so a finalize lost with its worker is found again.
-- KEYS[6] the job's run-index lines not yet written to storage (list; see run_index.py)
-- KEYS[7] the fleet's counters (``state.metrics``): the run's outcome, a failed run's
-- error_kind (also in the job hash, `failed|<kind>`) and the spend are counted there
-- ARGV[1] run index, ARGV[2] counter to bump (succeeded|skipped|failed), ARGV[3] result line,
-- ARGV[4] ledger entry id ('' when nothing is charged), ARGV[5] ledger line,
-- ARGV[6] cost in micro-USD, ARGV[7] the run's index line ('' when it has none): pushed
-- in the same step as the charge, so every charged output is indexed, ARGV[8] the UTC day
-- now (YYYY-MM-DD), ARGV[9] a failed run's error_kind ('' for none)
-- KEYS[8] the job's alert claims, KEYS[9] the alerts outbox, KEYS[10] its due set; ARGV[10]
-- and ARGV[11] the prefix and suffix of a day's spend hash: a charge claims the budget alerts
-- it crosses in the same step (alerts_lib.lua), so a redelivery never claims one again.
-- A charged run's reservation turns into spend (held_micros is corrected to the real cost);
-- any other run's reservation must have been released before (budget_release.lua).
-- Loaded after budget_lib.lua and alerts_lib.lua.
-- The job hash's index_since is when the oldest pending index line was pushed (Redis time,
-- ms), so the caller can write the lines once they have waited long enough.
-- Returns {code, index lines pending, ms the oldest of them has waited}: code -1 when the run
-- was already finished (a redelivery), 1 when this call finished the job's last run (the
-- caller then finalizes the job), 0 otherwise, -2 when the job has no record (Redis lost its
-- state): nothing is written, so a lost job is never brought back as a partial record.
if redis.call('HEXISTS', KEYS[1], 'total') == 0 then
  return {-2, 0, 0}
end
if redis.call('HSETNX', KEYS[2], ARGV[1], ARGV[3]) == 0 then
  return {-1, 0, 0}
end
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local pending = 0
local waited = 0
if ARGV[7] ~= '' then
  pending = redis.call('RPUSH', KEYS[6], ARGV[7])
  if pending == 1 then
    redis.call('HSET', KEYS[1], 'index_since', now_ms)
  else
    waited = now_ms - tonumber(redis.call('HGET', KEYS[1], 'index_since') or now_ms)
  end
end
if ARGV[4] ~= '' and redis.call('HSETNX', KEYS[3], ARGV[4], ARGV[5]) == 1 then
  local day = reservation_to_spend(KEYS[1], KEYS[4], ARGV[1], tonumber(ARGV[6]), KEYS[7], ARGV[8])
  if day then
    spend_alerts(KEYS[1], KEYS[8], KEYS[9], KEYS[10], day, ARGV[10] .. day .. ARGV[11], tonumber(ARGV[6]))
  end
end
redis.call('HINCRBY', KEYS[1], ARGV[2], 1)
redis.call('HINCRBY', KEYS[7], 'runs|' .. ARGV[2], 1)
if ARGV[9] ~= '' then
  redis.call('HINCRBY', KEYS[7], 'failed|' .. ARGV[9], 1)
  redis.call('HINCRBY', KEYS[1], 'failed|' .. ARGV[9], 1)
end
local finished = redis.call('HINCRBY', KEYS[1], 'finished', 1)
if finished == tonumber(redis.call('HGET', KEYS[1], 'total')) then
  redis.call('ZADD', KEYS[5], tonumber(t[1]), redis.call('HGET', KEYS[1], 'id'))
  return {1, pending, waited}
end
return {0, pending, waited}
