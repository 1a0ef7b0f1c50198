-- Hand a fetched but unstarted message back to its group at once (graceful shutdown):
-- acknowledge it where it was and append it to the group's retry stream, if the consumer
-- still owns its entry (else nothing changes).
-- KEYS[1] source stream, KEYS[2] group's retry stream, KEYS[3] the queue's count of
-- takeovers for the group (letting go counts: see settle.lua)
-- ARGV[1] group, ARGV[2] consumer, ARGV[3] entry id, ARGV[4] source is the retry stream (0/1),
-- ARGV[5..] the entry's field/value pairs
-- Returns 1 if handed back, 0 if the entry is not the consumer's
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if #p == 0 or p[1][2] ~= ARGV[2] then return 0 end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
redis.call('INCR', KEYS[3])
if ARGV[4] == '1' then redis.call('XDEL', KEYS[1], ARGV[3]) end
redis.call('XADD', KEYS[2], '*', unpack(ARGV, 5))
return 1
