-- A job's first submit is on its way: note when, and make a queued job running.
-- A cancelled or stopped job keeps its status.
-- KEYS[1] job hash, ARGV[1] the time (ISO 8601, UTC)
redis.call('HSETNX', KEYS[1], 'started_at', ARGV[1])
if redis.call('HGET', KEYS[1], 'status') == 'queued' then
  redis.call('HSET', KEYS[1], 'status', 'running')
end
return 1
