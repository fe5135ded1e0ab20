-- Give a run's start claim back, only if the caller still holds it.
-- KEYS[1] the run's claim; ARGV[1] the caller's claim token.
-- A claim that lapsed under its holder (a long step, Redis away) may be another execution's
-- by now: deleting it would let a third start while the second is submitting.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
