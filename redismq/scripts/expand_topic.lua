-- Add queues to a topic; existing queues keep their placement.
-- KEYS[1] topics hash, KEYS[2] routes hash, KEYS[3] routes version counter
-- ARGV[1] change channel, ARGV[2] topic, ARGV[3] queues before, ARGV[4] new topic record,
-- ARGV[5..] broker of each new queue, in order
-- Returns 1, or 0 when the topic no longer has ARGV[3] queues (a concurrent change).
local record = redis.call('HGET', KEYS[1], ARGV[2])
if not record or cjson.decode(record)['queues'] ~= tonumber(ARGV[3]) then return 0 end
redis.call('HSET', KEYS[1], ARGV[2], ARGV[4])
for i = 5, #ARGV do
  redis.call('HSET', KEYS[2], ARGV[2] .. '#' .. (tonumber(ARGV[3]) + i - 5), ARGV[i])
end
redis.call('PUBLISH', ARGV[1], redis.call('INCR', KEYS[3]))
return 1
