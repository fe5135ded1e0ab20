-- When this Redis's records begin: set at first use (a job's creation) and never changed,
-- so a Redis that lost its data (restarted without persistence, flushed, replaced) says so
-- by an epoch later than the jobs it is asked about.
-- KEYS[1] the epoch key. Returns its value: Unix seconds, Redis time.
redis.call('SET', KEYS[1], redis.call('TIME')[1], 'NX')
return redis.call('GET', KEYS[1])
