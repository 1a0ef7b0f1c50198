-- Delete dead letters of one group on one queue and count them; their messages' step
-- marks get the done window (they cannot come back any more).
-- KEYS[1] dead-letter stream, KEYS[2] stats hash, KEYS[3..] steps hashes of the messages
-- ARGV[1] done ttl ms, ARGV[2..] entry ids
-- Returns how many were deleted.
local n = 0
if #ARGV > 1 then n = redis.call('XDEL', KEYS[1], unpack(ARGV, 2)) end
for i = 3, #KEYS do redis.call('PEXPIRE', KEYS[i], ARGV[1]) end
if n > 0 then redis.call('HINCRBY', KEYS[2], 'dead', -n) end
return n
