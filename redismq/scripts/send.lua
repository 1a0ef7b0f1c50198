-- Send one message with a dedup key and/or a delay.
-- KEYS[1] stream, KEYS[2] delayed zset, KEYS[3] dedup key, KEYS[4] queue counters hash
-- ARGV[1] message id, ARGV[2] dedup window ms (0: no dedup), ARGV[3] due ms (0: now),
-- ARGV[4..] the entry's field/value pairs
-- Returns {message id, 1 if newly sent else 0}
if ARGV[2] ~= '0' then
  local first = redis.call('GET', KEYS[3])
  if first then
    redis.call('HINCRBY', KEYS[4], 'deduplicated', 1)
    return {first, 0}
  end
  redis.call('SET', KEYS[3], ARGV[1], 'PX', ARGV[2])
end
if ARGV[3] ~= '0' then
  redis.call('ZADD', KEYS[2], ARGV[3], pack(ARGV, 4, #ARGV))
else
  redis.call('XADD', KEYS[1], '*', unpack(ARGV, 4))
end
return {ARGV[1], 1}
