-- Whether a budget alert waits for a sender, and if so mark a sender as on its way.
-- KEYS[1] the alerts' due set (alert id -> ms), KEYS[2] the sender's kick mark;
-- ARGV[1] the mark's life in ms. Returns 1 when an alert is due and the mark was free (the
-- caller sends the sender), else 0: a fleet's watchdogs send one sender for it.
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if #redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now_ms, 'LIMIT', 0, 1) == 0 then
  return 0
end
if redis.call('SET', KEYS[2], 1, 'NX', 'PX', tonumber(ARGV[1])) then
  return 1
end
return 0
