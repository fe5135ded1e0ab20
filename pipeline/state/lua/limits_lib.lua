-- Shared helpers, prepended to every limits_* script except the fair queue's when it is loaded.
-- Times are integer microseconds on the Redis server's clock (TIME), never a caller's clock,
-- so workers on machines with skewed clocks agree.

local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end

-- Integers beyond 1e14 lose digits through tostring(); Redis must store them exactly.
local function int(n)
  return string.format('%.0f', n)
end

-- A throttle hash holds `until` (end of the fleet-wide pause), `factor` (rate factor right
-- after the last cut) and `since` (when recovery started: the end of that pause). The factor
-- grows back linearly by 1/recovery_us per microsecond after `since`, up to 1.
-- Returns the pause left (0 when none) and the factor now.
local function throttle_state(key, now, recovery_us)
  local h = redis.call('HMGET', key, 'until', 'factor', 'since')
  local paused_until = tonumber(h[1]) or 0
  local factor = tonumber(h[2]) or 1
  local since = tonumber(h[3]) or 0
  if now < paused_until then
    return paused_until - now, factor
  end
  if now > since then
    factor = factor + (now - since) / recovery_us
  end
  return 0, math.min(1, factor)
end

-- GCRA: the wait before one more start conforms (0 = now), and the theoretical arrival time
-- (TAT) to store if it is taken. `interval_us` is the spacing at the current rate,
-- `catch_up_us` how far behind its schedule the fleet may fall and still make the starts up.
-- Starts made up come no closer than half the interval after the last start (`last_key`,
-- the time of the last start): twice the rate for a moment, never back to back.
local function gcra(key, last_key, now, interval_us, catch_up_us)
  local tat = math.max(tonumber(redis.call('GET', key)) or now, now)
  local wait = math.max(0, tat - catch_up_us - now)
  if catch_up_us > 0 then
    local last = tonumber(redis.call('GET', last_key))
    if last then
      wait = math.max(wait, last + interval_us / 2 - now)
    end
  end
  return wait, tat + interval_us
end

local function gcra_take(key, last_key, now, new_tat, catch_up_us)
  local ttl_ms = math.ceil((new_tat - now) / 1000) + 1
  redis.call('SET', key, int(new_tat), 'PX', ttl_ms)
  if catch_up_us > 0 then
    redis.call('SET', last_key, int(now), 'PX', ttl_ms)
  end
end

-- Leases: a sorted set holder -> expiry. Expired leases are dropped first, so a holder that
-- died without releasing frees its slot once its lease runs out.
-- Returns 0 when `holder` may hold a lease now (it has one, or a slot is free), otherwise the
-- microseconds until the oldest lease expires (a slot may free sooner, by a release).
local function lease_wait(key, holder, limit, now)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', int(now))
  if redis.call('ZSCORE', key, holder) or redis.call('ZCARD', key) < limit then
    return 0
  end
  local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  return math.max(1, tonumber(oldest[2]) - now)
end

local function lease_take(key, holder, now, lease_us)
  redis.call('ZADD', key, int(now + lease_us), holder)
  redis.call('PEXPIRE', key, math.ceil(lease_us / 1000) + 1000)
end
