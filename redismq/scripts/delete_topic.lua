-- Unregister a topic: its record, its routes and its set of groups; bump the route version.
-- KEYS[1] topics hash, KEYS[2] routes hash, KEYS[3] routes version counter, KEYS[4] groups set
-- ARGV[1] topic name, ARGV[2] number of queues
-- Returns 1 if the topic existed, else 0.
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
for q = 0, tonumber(ARGV[2]) - 1 do
  redis.call('HDEL', KEYS[2], ARGV[1] .. '#' .. q)
end
redis.call('DEL', KEYS[4])
redis.call('INCR', KEYS[3])
return 1
