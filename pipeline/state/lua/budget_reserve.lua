-- Reserve the price of one paid call against every budget that applies, or none of them.
-- KEYS[1] job hash (fields budget_micros: the cap or '', held_micros: spent + reserved)
-- KEYS[2] reservations hash (run index -> "micros|day")
-- KEYS[3] the day's counter (micro-USD held on that UTC day, every job together)
-- ARGV[1] run index, ARGV[2] price in micro-USD, ARGV[3] the day's cap in micro-USD or '',
-- ARGV[4] the UTC day (YYYY-MM-DD)
-- KEYS[4] the day's spend hash: its `cap` is set to the day's cap each reservation is held
-- against, so that the charges of that day can tell when they cross it (alerts_lib.lua).
-- Returns 1 reserved (or already reserved: a redelivery), -1 the job's budget is used up,
-- -2 the day's budget is used up.
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then
  return 1
end
local price = tonumber(ARGV[2])
local cap = redis.call('HGET', KEYS[1], 'budget_micros')
local held = tonumber(redis.call('HGET', KEYS[1], 'held_micros') or '0')
if cap and cap ~= '' and held + price > tonumber(cap) then
  return -1
end
if ARGV[3] ~= '' then
  local day_held = tonumber(redis.call('GET', KEYS[3]) or '0')
  if day_held + price > tonumber(ARGV[3]) then
    return -2
  end
end
redis.call('HINCRBY', KEYS[1], 'held_micros', price)
redis.call('INCRBY', KEYS[3], price)
redis.call('EXPIRE', KEYS[3], 3 * 86400)
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2] .. '|' .. ARGV[4])
if ARGV[3] ~= '' then
  redis.call('HSET', KEYS[4], 'cap', ARGV[3])
  redis.call('EXPIRE', KEYS[4], 3 * 86400)
end
return 1
