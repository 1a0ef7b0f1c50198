-- Schedule a failed message's next attempt for one group only.
-- KEYS[1] source stream, KEYS[2] group's retry zset, KEYS[3] stats hash, KEYS[4] job hash
-- ARGV[1] group, ARGV[2] entry id, ARGV[3] source is the retry stream (0/1), ARGV[4] due ms,
-- ARGV[5] track job (0/1), ARGV[6] result ttl ms, ARGV[7] error text,
-- ARGV[8..] the entry's field/value pairs for the next attempt
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
if ARGV[3] == '1' then redis.call('XDEL', KEYS[1], ARGV[2]) end
redis.call('ZADD', KEYS[2], ARGV[4], pack(ARGV, 8, #ARGV))
redis.call('HINCRBY', KEYS[3], 'retried', 1)
if ARGV[5] == '1' then
  redis.call('HSET', KEYS[4], 'status', 'failed', 'error', ARGV[7], 'retry_at', ARGV[4])
  redis.call('PEXPIRE', KEYS[4], ARGV[6])
end
return 1
