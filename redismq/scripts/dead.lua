-- Move a message to one group's dead-letter stream with the reason, if the consumer still
-- owns its entry (else nothing changes: another consumer took it over, or it was settled).
-- A message the group completed already (another entry of it) is acknowledged as a
-- duplicate instead: a message never ends both done and dead.
-- KEYS[1] source stream, KEYS[2] dead-letter stream, KEYS[3] stats hash, KEYS[4] job hash,
-- KEYS[5] job outcome list, KEYS[6] group's done zset, KEYS[7] the queue's count of
-- takeovers for the group (letting go counts: see settle.lua)
-- ARGV[1] group, ARGV[2] consumer, ARGV[3] entry id, ARGV[4] source is the retry stream (0/1),
-- ARGV[5] track job (0/1), ARGV[6] result ttl ms, ARGV[7] error text,
-- ARGV[8] message id ('' when unknown: an entry that cannot be decoded),
-- ARGV[9..] field/value pairs of the dead-letter entry (a tracked job's gains dead_job=1:
-- replaying it makes the job live again, see replay.lua)
-- Returns 1 if dead-lettered, 2 if acknowledged as a duplicate, 0 if the entry is not the
-- consumer's
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if #p == 0 or p[1][2] ~= ARGV[2] then return 0 end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
redis.call('INCR', KEYS[7])
if ARGV[4] == '1' then redis.call('XDEL', KEYS[1], ARGV[3]) end
if ARGV[8] ~= '' and redis.call('ZSCORE', KEYS[6], ARGV[8]) then
  redis.call('HINCRBY', KEYS[3], 'duplicates', 1)
  return 2
end
redis.call('HINCRBY', KEYS[3], 'dead', 1)
if ARGV[5] ~= '1' then
  redis.call('XADD', KEYS[2], '*', unpack(ARGV, 9))
else
  redis.call('XADD', KEYS[2], '*', 'dead_job', '1', unpack(ARGV, 9))
  redis.call('HSET', KEYS[4], 'status', 'dead', 'error', ARGV[7])
  redis.call('PEXPIRE', KEYS[4], ARGV[6])
  redis.call('RPUSH', KEYS[5], '{"status":"dead"}')
  redis.call('PEXPIRE', KEYS[5], ARGV[6])
end
return 1
