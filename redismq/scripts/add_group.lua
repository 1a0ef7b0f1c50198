-- Remember that a group consumes a topic; a new group bumps the route version (producers
-- re-read the topic's groups, which bound its backlog).
-- KEYS[1] the topic's groups set, KEYS[2] routes version counter
-- ARGV[1] group name
-- Returns 1 if the group is new, else 0.
if redis.call('SADD', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('INCR', KEYS[2])
return 1
