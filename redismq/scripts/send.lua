-- Send one message with a dedup key, a delay and/or a bound on the queue's backlog (its
-- definition: _backlog.lua, the same as redismq/backlog.py).
-- KEYS[1] stream, KEYS[2] delayed zset, KEYS[3] dedup key, KEYS[4] queue counters hash,
-- KEYS[5..] per known group: its retry stream, its retry zset
-- ARGV[1] message id, ARGV[2] dedup window ms (0: no dedup), ARGV[3] delay ms (0: now; due on the server's clock),
-- ARGV[4] most unfinished messages the queue may hold (0: no bound),
-- ARGV[5] number of known groups G, ARGV[6..5+G] their names,
-- ARGV[6+G..] the entry's field/value pairs
-- Returns {message id, 1} when sent, {first id, 0} for a duplicate, {'', -1} when full.
if ARGV[2] ~= '0' then
  local first = redis.call('GET', KEYS[3])
  if first then
    redis.call('HINCRBY', KEYS[4], 'deduplicated', 1)
    return {first, 0}
  end
end
local ngroups = tonumber(ARGV[5])
local bound = tonumber(ARGV[4])
if bound > 0 then
  local groups = {}
  for i = 1, ngroups do
    groups[i] = {ARGV[5 + i], KEYS[3 + 2 * i], KEYS[4 + 2 * i]}
  end
  if queue_backlog(KEYS[1], KEYS[2], groups) >= bound then
    redis.call('HINCRBY', KEYS[4], 'refused', 1)
    return {'', -1}
  end
end
if ARGV[2] ~= '0' then
  redis.call('SET', KEYS[3], ARGV[1], 'PX', ARGV[2])
end
local first_field = 6 + ngroups
if ARGV[3] ~= '0' then
  redis.call('ZADD', KEYS[2], server_ms() + tonumber(ARGV[3]), pack(ARGV, first_field, #ARGV))
else
  redis.call('XADD', KEYS[1], '*', unpack(ARGV, first_field))
end
return {ARGV[1], 1}
