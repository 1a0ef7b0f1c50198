-- Schedule a failed message's next attempt for one group only, if the consumer still owns
-- its entry (else nothing changes: another consumer took it over, or it was settled).
-- KEYS[1] source stream, KEYS[2] group's retry zset, KEYS[3] stats hash, KEYS[4] job hash,
-- KEYS[5] the queue's count of takeovers for the group (letting go counts: see settle.lua)
-- ARGV[1] group, ARGV[2] consumer, ARGV[3] entry id, ARGV[4] source is the retry stream (0/1),
-- ARGV[5] delay ms (due on the server's clock), ARGV[6] track job (0/1), ARGV[7] result ttl ms, ARGV[8] error text,
-- ARGV[9..] the entry's field/value pairs for the next attempt
-- Returns 1 if scheduled, 0 if the entry is not the consumer's
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if #p == 0 or p[1][2] ~= ARGV[2] then return 0 end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
redis.call('INCR', KEYS[5])
if ARGV[4] == '1' then redis.call('XDEL', KEYS[1], ARGV[3]) end
local due = server_ms() + tonumber(ARGV[5])
redis.call('ZADD', KEYS[2], due, pack(ARGV, 9, #ARGV))
redis.call('HINCRBY', KEYS[3], 'retried', 1)
if ARGV[6] == '1' then
  redis.call('HSET', KEYS[4], 'status', 'failed', 'error', ARGV[8], 'retry_at', due)
  redis.call('PEXPIRE', KEYS[4], ARGV[7])
end
return 1
