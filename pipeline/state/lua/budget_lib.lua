-- Shared helpers of the budget scripts, prepended to finish_run.lua, charge_unconfirmed.lua
-- and budget_release.lua when they are loaded.
-- A reservation is the field <run index> of the job's reservations hash: "micros|day".

-- The micro-USD and the UTC day of a reservation's value.
local function parse_reservation(held)
  local sep = string.find(held, '|', 1, true)
  return tonumber(string.sub(held, 1, sep - 1)), string.sub(held, sep + 1)
end

-- A charged run's reservation becomes spend: `cost` is added to the job's spent_micros and
-- held_micros (spent + reserved) is corrected from the reserved price to the real cost.
-- The fleet's spend counters (`metrics`, the hash of ``state.metrics``) count it in the same
-- step: in total, by the UTC day the reservation was held against (`today` for a run that
-- held none), and by the job's schedule when it has one.
-- Returns the reservation's UTC day, or nil when the run held none (a charge rebuilt from
-- storage after Redis lost a job: paid before, counted on no day's budget, so it claims no
-- day's budget alert).
local function reservation_to_spend(job, reservations, index, cost, metrics, today)
  redis.call('HINCRBY', job, 'spent_micros', cost)
  local held = redis.call('HGET', reservations, index)
  local reserved = 0
  local day = nil
  if held then
    reserved, day = parse_reservation(held)
    redis.call('HDEL', reservations, index)
  end
  redis.call('HINCRBY', job, 'held_micros', cost - reserved)
  if cost ~= 0 then
    redis.call('HINCRBY', metrics, 'spend', cost)
    redis.call('HINCRBY', metrics, 'spend|day|' .. (day or today), cost)
    local schedule = redis.call('HGET', job, 'schedule')
    if schedule and schedule ~= '' then
      redis.call('HINCRBY', metrics, 'spend|schedule|' .. schedule, cost)
    end
  end
  return day
end
