-- Change one field of a registry hash (brokers, routes, topics) and, if anything changed,
-- bump the route version and announce it.
-- KEYS[1] hash, KEYS[2] routes version counter
-- ARGV[1] change channel, ARGV[2] mode: 'nx' (add only), 'xx' (replace only), 'del',
-- ARGV[3] field, ARGV[4] value (not for 'del')
-- Returns 1 if the hash changed, 0 if not (the field existed for 'nx', or not for 'xx'/'del').
local exists = redis.call('HEXISTS', KEYS[1], ARGV[3]) == 1
local mode = ARGV[2]
if (mode == 'nx' and exists) or (mode ~= 'nx' and not exists) then return 0 end
if mode == 'del' then
  redis.call('HDEL', KEYS[1], ARGV[3])
else
  redis.call('HSET', KEYS[1], ARGV[3], ARGV[4])
end
redis.call('PUBLISH', ARGV[1], redis.call('INCR', KEYS[2]))
return 1
