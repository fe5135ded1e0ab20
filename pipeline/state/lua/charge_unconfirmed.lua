-- Record a submit whose answer was lost: the provider may have created and will bill that
-- prediction, so its price is charged as an `unconfirmed_submit` ledger line and the
-- reservation becomes spend (never released: the budget must not be passed).
-- KEYS[1] job hash, KEYS[2] ledger hash, KEYS[3] reservations hash, KEYS[4] the fleet's
-- counters (``state.metrics``: the spend is counted there)
-- ARGV[1] run index, ARGV[2] ledger entry id, ARGV[3] ledger line, ARGV[4] cost in micro-USD,
-- ARGV[5] the UTC day now (YYYY-MM-DD)
-- KEYS[5] the job's alert claims, KEYS[6] the alerts outbox, KEYS[7] its due set; ARGV[6] and
-- ARGV[7] the prefix and suffix of a day's spend hash (the budget alerts it crosses).
-- Loaded after budget_lib.lua and alerts_lib.lua.
-- Returns 1 when charged, 0 when this entry was charged before.
if redis.call('HSETNX', KEYS[2], ARGV[2], ARGV[3]) == 0 then
  return 0
end
local cost = tonumber(ARGV[4])
redis.call('HINCRBY', KEYS[1], 'unconfirmed_micros', cost)
local day = reservation_to_spend(KEYS[1], KEYS[3], ARGV[1], cost, KEYS[4], ARGV[5])
if day then
  spend_alerts(KEYS[1], KEYS[5], KEYS[6], KEYS[7], day, ARGV[6] .. day .. ARGV[7], cost)
end
return 1
