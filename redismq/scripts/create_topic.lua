-- Register a topic and place its queues, unless it exists already.
-- KEYS[1] topics hash, KEYS[2] routes hash, KEYS[3] routes version counter
-- ARGV[1] routes change channel, ARGV[2] topic name, ARGV[3] topic record (JSON),
-- ARGV[4..] broker name of queue 0, 1, ...
-- Returns the stored topic record (the existing one if the topic was there).
local existing = redis.call('HGET', KEYS[1], ARGV[2])
if existing then return existing end
redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
for i = 4, #ARGV do
  redis.call('HSET', KEYS[2], ARGV[2] .. '#' .. (i - 4), ARGV[i])
end
local version = redis.call('INCR', KEYS[3])
redis.call('PUBLISH', ARGV[1], version)
return ARGV[3]
