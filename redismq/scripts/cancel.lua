-- Cancel a job unless it already finished: mark it, wake its waiters, and let every group's
-- workers see it in the queue's cancel marks (a queued one is then skipped, a running one
-- stopped). The mark expires after its ttl (server time); expired marks are pruned here.
-- KEYS[1] job hash, KEYS[2] job outcome list, KEYS[3] cancel marks zset,
-- KEYS[4] job's group's done zset, KEYS[5] its running zset (a running job's attempt is
-- kept in the job hash: what `describe` shows of a job stopped while it ran)
-- ARGV[1] message id, ARGV[2] result ttl ms, ARGV[3] mark ttl ms
-- Returns 1 if the job was cancelled, 0 if it had finished already (done, dead, cancelled).
if redis.call('ZSCORE', KEYS[4], ARGV[1]) then return 0 end
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
local status = redis.call('HGET', KEYS[1], 'status')
if status == 'done' or status == 'dead' or status == 'cancelled' then return 0 end
local now = server_ms()
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
redis.call('ZADD', KEYS[3], now + tonumber(ARGV[3]), ARGV[1])
redis.call('HSET', KEYS[1], 'status', 'cancelled')
local running = redis.call('ZSCORE', KEYS[5], ARGV[1])
if running then  -- score: start ms * 1000 + attempt
  redis.call('HSET', KEYS[1], 'attempt', math.floor(tonumber(running)) % 1000)
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('RPUSH', KEYS[2], '{"status":"cancelled"}')
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return 1
