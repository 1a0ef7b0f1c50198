-- Change one field of a registry hash (brokers, routes, topics) and, if anything changed,
-- bump the route version (clients re-read what they cached).
-- KEYS[1] hash, KEYS[2] routes version counter
-- ARGV[1] mode: 'nx' (add only), 'xx' (replace only), 'del', ARGV[2] field,
-- ARGV[3] value (not for 'del')
-- Returns 1 if the hash changed, 0 if not (the field existed for 'nx', or not for 'xx'/'del').
local exists = redis.call('HEXISTS', KEYS[1], ARGV[2]) == 1
local mode = ARGV[1]
if (mode == 'nx' and exists) or (mode ~= 'nx' and not exists) then return 0 end
if mode == 'del' then
  redis.call('HDEL', KEYS[1], ARGV[2])
else
  redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
end
redis.call('INCR', KEYS[2])
return 1
