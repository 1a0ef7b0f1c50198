-- Register a topic and place its queues, unless it exists already; bump the route version.
-- KEYS[1] topics hash, KEYS[2] routes hash, KEYS[3] routes version counter
-- ARGV[1] topic name, ARGV[2] topic record (JSON), ARGV[3..] broker name of queue 0, 1, ...
-- Returns the stored topic record (the existing one if the topic was there).
local existing = redis.call('HGET', KEYS[1], ARGV[1])
if existing then return existing end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
for i = 3, #ARGV do
  redis.call('HSET', KEYS[2], ARGV[1] .. '#' .. (i - 3), ARGV[i])
end
redis.call('INCR', KEYS[3])
return ARGV[2]
