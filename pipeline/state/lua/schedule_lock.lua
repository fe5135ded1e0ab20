-- A schedule's lock, changed only if it still holds what the caller saw (compare and set).
-- KEYS[1] the lock (ep:schedule:<name>:lock)
-- ARGV[1] the value the caller saw ('' = no lock)
-- ARGV[2] the new value ('' = remove the lock)
-- ARGV[3] milliseconds the new value lives (0 = until replaced)
-- Returns 1 when changed, 0 when the lock held something else (another start won).
local current = redis.call('GET', KEYS[1]) or ''
if current ~= ARGV[1] then
  return 0
end
if ARGV[2] == '' then
  redis.call('DEL', KEYS[1])
elseif tonumber(ARGV[3]) > 0 then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
else
  redis.call('SET', KEYS[1], ARGV[2])
end
return 1
