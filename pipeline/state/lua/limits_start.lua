-- Permission to start one prediction: a concurrency lease AND a rate token, both or neither.
-- KEYS[1] rate TAT, KEYS[2] lease sorted set, KEYS[3] throttle hash, KEYS[4] time of the
-- last start, KEYS[5] (optional) the account's counts hash: a start taken is counted there
-- (metrics_lib.lua's count_start)
-- ARGV[1] holder, ARGV[2] concurrency limit, ARGV[3] lease (us), ARGV[4] interval at full
-- rate (us), ARGV[5] catch-up (us), ARGV[6] throttle recovery (us), ARGV[7] longest
-- wait to suggest while every slot is taken (us; a release may free one at any time)
-- Returns 0 when both were taken, otherwise the microseconds to wait (nothing taken).
local now = now_us()
local pause, factor = throttle_state(KEYS[3], now, tonumber(ARGV[6]))
if pause > 0 then
  return pause
end
local rate_wait, new_tat = gcra(KEYS[1], KEYS[4], now, tonumber(ARGV[4]) / factor, tonumber(ARGV[5]))
local slot_wait = lease_wait(KEYS[2], ARGV[1], tonumber(ARGV[2]), now)
if slot_wait > 0 then
  slot_wait = math.min(slot_wait, tonumber(ARGV[7]))
end
local wait = math.max(rate_wait, slot_wait)
if wait > 0 then
  return math.ceil(wait)
end
gcra_take(KEYS[1], KEYS[4], now, new_tat, tonumber(ARGV[5]))
lease_take(KEYS[2], ARGV[1], now, tonumber(ARGV[3]))
if KEYS[5] then
  count_start(KEYS[5], math.floor(now / 1000000))
end
return 0
