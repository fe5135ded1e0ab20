-- Take one start from a smooth rate (GCRA), unless the fleet is paused by a throttle.
-- KEYS[1] the TAT string, KEYS[2] the time of the last start; KEYS[3] (optional) the throttle
-- hash
-- ARGV[1] interval between starts at full rate (us), ARGV[2] catch-up (us), ARGV[3] the
-- throttle's recovery time (us)
-- Returns 0 when the start was taken, otherwise the microseconds to wait (nothing changed).
local now = now_us()
local interval = tonumber(ARGV[1])
if KEYS[3] then
  local pause, factor = throttle_state(KEYS[3], now, tonumber(ARGV[3]))
  if pause > 0 then
    return pause
  end
  interval = interval / factor
end
local wait, new_tat = gcra(KEYS[1], KEYS[2], now, interval, tonumber(ARGV[2]))
if wait > 0 then
  return math.ceil(wait)
end
gcra_take(KEYS[1], KEYS[2], now, new_tat, tonumber(ARGV[2]))
return 0
