-- A submit answered with its prediction id: the run records it (a redelivery polls it), the
-- id becomes known account-wide, and the submit leaves the wire, in one step, so that no
-- look for a lost answer ever sees the prediction as neither known nor possibly in flight.
-- The answer's creation time gives one sample of the provider's clock against Redis's.
-- KEYS[1] prediction ids (index -> id), KEYS[2] submits on the wire of the job (index -> 1),
-- KEYS[3] submit records, KEYS[4] their starts, KEYS[5] known ids, KEYS[6] when recorded,
-- KEYS[7] clock samples (list), KEYS[8] the fair queue's jobs hash, KEYS[9] the job's failed
-- predictions (index -> count), KEYS[10] the queue-wait histogram (``state.metrics``)
-- ARGV[1] run index, ARGV[2] the run's member, ARGV[3] prediction id, ARGV[4] its owner,
-- ARGV[5] its creation time (provider's clock, ms; '' when unknown), ARGV[6] samples kept,
-- ARGV[7] the job id, ARGV[8] the histogram's bounds
-- The run's queue wait (from its job's registration in the fair queue to this answer) is
-- observed at the run's first answered submit only: not again for a prediction submitted
-- anew after a failed one, whose wait was a backoff, not the queue.
local first = redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 and redis.call('HEXISTS', KEYS[9], ARGV[1]) == 0
local now = record_known(KEYS[1], KEYS[2], KEYS[5], KEYS[6], ARGV[1], ARGV[3], ARGV[4])
local pushed = first and tonumber(redis.call('HGET', KEYS[8], ARGV[7] .. '|pushed'))
if pushed then
  observe(KEYS[10], '', math.max(0, now / 1000 - pushed), ARGV[8])
end
local raw = redis.call('HGET', KEYS[3], ARGV[2])
if raw then
  local record = cjson.decode(raw)
  if ARGV[5] ~= '' and record.state == 'wire' then
    -- It was created between the start and now (Redis's clock); its stamp is truncated to
    -- the millisecond, hence the 1.
    local created = tonumber(ARGV[5])
    redis.call('LPUSH', KEYS[7], (created - now) .. '|' .. (created + 1 - record.start_ms) .. '|' .. now)
    redis.call('LTRIM', KEYS[7], 0, tonumber(ARGV[6]) - 1)
  end
  redis.call('HDEL', KEYS[3], ARGV[2])
  redis.call('ZREM', KEYS[4], ARGV[2])
end
return now
