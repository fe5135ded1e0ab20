-- Give back a run's reservation: the call was not billed (rejected, failed, not sent).
-- Idempotent: a reservation is released at most once.
-- KEYS[1] job hash, KEYS[2] reservations hash; ARGV[1] run index, ARGV[2] day-key prefix.
-- Loaded after budget_lib.lua.
-- Returns the micro-USD released (0 when there was no reservation).
local held = redis.call('HGET', KEYS[2], ARGV[1])
if not held then
  return 0
end
redis.call('HDEL', KEYS[2], ARGV[1])
local micros, day = parse_reservation(held)
redis.call('HINCRBY', KEYS[1], 'held_micros', -micros)
redis.call('DECRBY', ARGV[2] .. day, micros)
return micros
