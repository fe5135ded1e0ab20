-- Helpers of the scripts that count for the metrics (``state.metrics``), prepended to them
-- when they are loaded, so a count is taken in the same atomic step as what it counts.

-- One observation of `value` in the histogram hash `key`, under `label`: its bucket (field
-- `<label>|<i>`, i the index of the first upper bound >= value, #bounds for +Inf), the sum
-- and the count. `bounds`: the upper bounds, ascending, comma-separated (``state.metrics``).
local function observe(key, label, value, bounds)
  local i = 0
  for bound in string.gmatch(bounds, '[^,]+') do
    if value <= tonumber(bound) then
      break
    end
    i = i + 1
  end
  redis.call('HINCRBY', key, label .. '|' .. i, 1)
  redis.call('HINCRBYFLOAT', key, label .. '|sum', value)
  redis.call('HINCRBY', key, label .. '|count', 1)
end

-- One start in the account's counts hash `key` at `now_s` (Redis time, whole seconds): the
-- total (`starts`) and a ring of the last 60 seconds, one field per second of the minute
-- (`w<now_s mod 60>` = "<second>:<starts in it>"), so the starts of the last minute are
-- read without a key per second or a log per start.
local function count_start(key, now_s)
  redis.call('HINCRBY', key, 'starts', 1)
  local field = 'w' .. string.format('%d', now_s % 60)
  local slot = redis.call('HGET', key, field)
  local n = 1
  if slot then
    local second, count = string.match(slot, '^(%d+):(%d+)$')
    if tonumber(second) == now_s then
      n = tonumber(count) + 1
    end
  end
  redis.call('HSET', key, field, string.format('%d', now_s) .. ':' .. n)
end
