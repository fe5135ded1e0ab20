-- A budget alert's sender is done with it (delivered, or given up): it leaves the outbox,
-- and its record, with ARGV[2] (the outcome), goes on the history list (the newest
-- ARGV[3] kept). KEYS[1] the outbox, KEYS[2] its due set, KEYS[3] the history list;
-- ARGV[1] the alert id.
-- Returns 1, or 0 when the alert had left the outbox already (another sender took it over
-- after this one's hold lapsed, and finished first): the history then has it once.
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then
  return 0
end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
local record = cjson.decode(raw)
local t = redis.call('TIME')
record.outcome = ARGV[2]
record.done_ms = string.format('%d', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
redis.call('LPUSH', KEYS[3], cjson.encode(record))
redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[3]) - 1)
return 1
