-- Move a message to one group's dead-letter stream with the reason.
-- KEYS[1] source stream, KEYS[2] dead-letter stream, KEYS[3] stats hash, KEYS[4] job hash,
-- KEYS[5] job outcome list
-- ARGV[1] group, ARGV[2] entry id, ARGV[3] source is the retry stream (0/1),
-- ARGV[4] track job (0/1), ARGV[5] result ttl ms, ARGV[6] error text,
-- ARGV[7..] field/value pairs of the dead-letter entry
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
if ARGV[3] == '1' then redis.call('XDEL', KEYS[1], ARGV[2]) end
redis.call('XADD', KEYS[2], '*', unpack(ARGV, 7))
redis.call('HINCRBY', KEYS[3], 'dead', 1)
if ARGV[4] == '1' then
  redis.call('HSET', KEYS[4], 'status', 'dead', 'error', ARGV[6])
  redis.call('PEXPIRE', KEYS[4], ARGV[5])
  redis.call('RPUSH', KEYS[5], '{"status":"dead"}')
  redis.call('PEXPIRE', KEYS[5], ARGV[5])
end
return 1
