-- Add queues to a topic (existing queues keep their placement); bump the route version.
-- KEYS[1] topics hash, KEYS[2] routes hash, KEYS[3] routes version counter
-- ARGV[1] topic, ARGV[2] queues before, ARGV[3] new topic record,
-- ARGV[4..] broker of each new queue, in order
-- Returns 1, or 0 when the topic no longer has ARGV[2] queues (a concurrent change).
local record = redis.call('HGET', KEYS[1], ARGV[1])
if not record or cjson.decode(record)['queues'] ~= tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
for i = 4, #ARGV do
  redis.call('HSET', KEYS[2], ARGV[1] .. '#' .. (tonumber(ARGV[2]) + i - 4), ARGV[i])
end
redis.call('INCR', KEYS[3])
return 1
