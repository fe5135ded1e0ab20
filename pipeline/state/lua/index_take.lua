-- Take a job's pending run-index lines as one numbered batch, to be written to storage.
-- KEYS[1] pending lines (list), KEYS[2] job hash, KEYS[3] batches not yet written (hash:
-- batch number -> lines joined by newlines)
-- ARGV[1] the fewest lines worth a batch
-- The job's index_since (when the oldest pending line was pushed) goes with the lines.
-- The lines move to KEYS[3] in the same step, so a worker that dies before writing them
-- loses nothing: finalize writes the job's whole index from its results anyway.
-- Returns {batch number, lines joined by newlines}, or nil when fewer lines are pending.
local count = redis.call('LLEN', KEYS[1])
if count == 0 or count < tonumber(ARGV[1]) then
  return nil
end
local lines = redis.call('LRANGE', KEYS[1], 0, -1)
redis.call('DEL', KEYS[1])
redis.call('HDEL', KEYS[2], 'index_since')
local seq = redis.call('HINCRBY', KEYS[2], 'index_batches', 1)
local text = table.concat(lines, '\n')
redis.call('HSET', KEYS[3], seq, text)
return {seq, text}
