-- Helpers of the submit_*.lua scripts (``lost_submits``).

-- Record ``prediction_id`` as run ``index``'s prediction (``pred_key``), no longer on the wire
-- (``wire_key``), and known account-wide as ``owner``'s since now (``known_key``,
-- ``known_at_key``); returns now, by Redis's clock, in ms.
local function record_known(pred_key, wire_key, known_key, known_at_key, index, prediction_id, owner)
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('HSET', pred_key, index, prediction_id)
  redis.call('HDEL', wire_key, index)
  redis.call('HSET', known_key, prediction_id, owner)
  redis.call('ZADD', known_at_key, now, prediction_id)
  return now
end
