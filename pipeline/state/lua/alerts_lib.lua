-- Budget alerts, prepended to finish_run.lua and charge_unconfirmed.lua (after budget_lib.lua).
-- A charge that brings a budget's spend to 50, 80 or 100 % of it claims each threshold it
-- reached, once: HSETNX on the budget's claims hash, the field naming the threshold and the
-- budget's amount (a resumed job with a raised budget has fresh thresholds). Each claim puts
-- one alert in the outbox in the same step: its record in the outbox hash, its id in the due
-- set at now, for a sender (pipeline/alerts.py) to take. Amounts are integer micro-USD,
-- written as strings so that no JSON float ever carries money.

local ALERT_THRESHOLDS = {50, 80, 100}

local function micros_text(n)
  return string.format('%d', n)
end

-- Claim every threshold of one budget that `spent` reached and no charge claimed before.
-- `scope` names the budget in the alert id: "job:<job id>", "schedule:<name>:<job id>" or
-- "day:<YYYY-MM-DD>".
local function claim_alerts(claims, outbox, due, kind, id, scope, job_id, budget, spent, notify, now_ms)
  for _, pct in ipairs(ALERT_THRESHOLDS) do
    if spent * 100 >= budget * pct then
      local alert_id = scope .. ':' .. pct .. '%:' .. micros_text(budget)
      if redis.call('HSETNX', claims, 'alert:' .. pct .. ':' .. micros_text(budget), alert_id) == 1 then
        redis.call('HSET', outbox, alert_id, cjson.encode({
          alert_id = alert_id, budget = kind, id = id, job_id = job_id, threshold = pct,
          budget_micros = micros_text(budget), spent_micros = micros_text(spent),
          notify_url = notify, claimed_ms = micros_text(now_ms), takes = 0,
        }))
        redis.call('ZADD', due, now_ms, alert_id)
      end
    end
  end
end

-- After a reserved run's charge of `cost` on the UTC day `day` (its reservation's): add it to
-- the day's spend, and claim the thresholds the job's (or its schedule's) budget and the
-- day's budget reached. `day_key` is the day's hash (spent, cap, its alerts' claims).
local function spend_alerts(job, claims, outbox, due, day, day_key, cost)
  local t = redis.call('TIME')
  local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local h = redis.call('HMGET', job, 'id', 'budget_micros', 'budget_of', 'schedule', 'spent_micros', 'notify_url')
  local job_id, notify = h[1] or '', h[6] or ''
  local budget = tonumber(h[2] or '')
  if budget and budget > 0 then
    if h[3] == 'schedule' and h[4] and h[4] ~= '' then
      claim_alerts(claims, outbox, due, 'schedule', h[4], 'schedule:' .. h[4] .. ':' .. job_id, job_id, budget,
                   tonumber(h[5]), notify, now_ms)
    else
      claim_alerts(claims, outbox, due, 'job', job_id, 'job:' .. job_id, job_id, budget, tonumber(h[5]), notify,
                   now_ms)
    end
  end
  local day_spent = redis.call('HINCRBY', day_key, 'spent', cost)
  redis.call('EXPIRE', day_key, 3 * 86400)
  local cap = tonumber(redis.call('HGET', day_key, 'cap') or '')
  if cap and cap > 0 then
    claim_alerts(day_key, outbox, due, 'day', day, 'day:' .. day, job_id, cap, day_spent, notify, now_ms)
  end
end
