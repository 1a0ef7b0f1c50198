-- Delete dead letters of one group on one queue (all, or the given entries) and count them.
-- KEYS[1] dead-letter stream, KEYS[2] stats hash
-- ARGV[1..] entry ids (none: all)
-- Returns how many were deleted.
local n
if #ARGV == 0 then
  n = redis.call('XLEN', KEYS[1])
  redis.call('DEL', KEYS[1])
else
  n = redis.call('XDEL', KEYS[1], unpack(ARGV))
end
if n > 0 then redis.call('HINCRBY', KEYS[2], 'dead', -n) end
return n
