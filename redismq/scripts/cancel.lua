-- Cancel a job unless it already finished: mark it, wake its waiters, and let workers see
-- it in the queue's cancelled set (a queued one is then skipped, a running one stopped).
-- KEYS[1] job hash, KEYS[2] job outcome list, KEYS[3] cancelled set, KEYS[4] group's done zset
-- ARGV[1] message id, ARGV[2] result ttl ms
-- Returns 1 if the job was cancelled, 0 if it had finished already.
if redis.call('ZSCORE', KEYS[4], ARGV[1]) then return 0 end
local status = redis.call('HGET', KEYS[1], 'status')
if status == 'done' or status == 'dead' or status == 'cancelled' then return 0 end
redis.call('HSET', KEYS[1], 'status', 'cancelled')
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('SADD', KEYS[3], ARGV[1])
redis.call('RPUSH', KEYS[2], '{"status":"cancelled"}')
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return 1
