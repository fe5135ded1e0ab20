-- Take up to ARGV[2] budget alerts that are due, for one sender, for ARGV[1] ms: each taken
-- alert's due time moves to now + ARGV[1], so no other sender takes it meanwhile, and comes
-- round again if this sender dies before it says how the alert went (alerts_done.lua).
-- KEYS[1] the outbox (alert id -> record JSON), KEYS[2] its due set (alert id -> ms).
-- Each record's `takes` counts how many senders took it (the caller gives up after a few).
-- Returns the taken records (JSON).
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ids = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now_ms, 'LIMIT', 0, tonumber(ARGV[2]))
local taken = {}
for _, id in ipairs(ids) do
  local raw = redis.call('HGET', KEYS[1], id)
  if raw then
    local record = cjson.decode(raw)
    record.takes = (tonumber(record.takes) or 0) + 1
    raw = cjson.encode(record)
    redis.call('HSET', KEYS[1], id, raw)
    redis.call('ZADD', KEYS[2], now_ms + tonumber(ARGV[1]), id)
    taken[#taken + 1] = raw
  else
    redis.call('ZREM', KEYS[2], id)
  end
end
return taken
