-- How many runs of a job were submitted and have no result yet (predictions in flight).
-- KEYS[1] prediction ids (index -> id), KEYS[2] results (index -> result line)
local n = 0
for _, index in ipairs(redis.call('HKEYS', KEYS[1])) do
  if redis.call('HEXISTS', KEYS[2], index) == 0 then
    n = n + 1
  end
end
return n
