-- A submit's answer was lost: its record says so, and when the loss was seen. A lost answer
-- cannot have been created after it was lost (ARGV[2] 'now'); one lost with its worker, after
-- its deadline (ARGV[2] 'deadline').
-- KEYS[1] submit records; ARGV[1] the run's member, ARGV[2] 'now' or 'deadline'
-- Returns the record (JSON), or nil when the run has none (its submit was never sent).
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then
  return nil
end
local record = cjson.decode(raw)
if record.state == 'wire' then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  record.state = 'lost'
  record.lost_at_ms = now
  if ARGV[2] == 'now' then
    record.end_ms = now
  else
    record.end_ms = record.deadline_ms
  end
  raw = cjson.encode(record)
  redis.call('HSET', KEYS[1], ARGV[1], raw)
end
return raw
