-- Mark a run's submit as on the wire, only while the caller still holds the run's start claim.
-- A claim can lapse under its holder (Redis away longer than the claim, a step slower than it)
-- and be taken by another execution; the first must then not submit too (fencing).
-- KEYS[1] the run's claim, KEYS[2] submit attempts (index -> count),
-- KEYS[3] submits on the wire (index -> 1), KEYS[4] prediction ids (index -> id)
-- ARGV[1] run index, ARGV[2] the caller's claim token
-- Returns the attempt number, or 0 when the claim is no longer the caller's (or the run has
-- a prediction already): nothing is marked and the caller must not submit.
if redis.call('GET', KEYS[1]) ~= ARGV[2] or redis.call('HEXISTS', KEYS[4], ARGV[1]) == 1 then
  return 0
end
redis.call('HSET', KEYS[3], ARGV[1], 1)
return redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
