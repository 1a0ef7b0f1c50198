-- A lease (a queue of an ordered group; the acting NameServer): take, renew or give it back.
-- KEYS[1] lease key
-- ARGV[1] 'take' | 'renew' | 'give', ARGV[2] owner (consumer or NameServer id), ARGV[3] ttl ms
-- Returns 1 if the caller holds (take, renew) or gave back (give) the lease, else 0.
local holder = redis.call('GET', KEYS[1])
if ARGV[1] == 'take' then
  if holder and holder ~= ARGV[2] then return 0 end
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
if holder ~= ARGV[2] then return 0 end
if ARGV[1] == 'renew' then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
else
  redis.call('DEL', KEYS[1])
end
return 1
