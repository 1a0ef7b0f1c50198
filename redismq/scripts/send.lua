-- Send one message with a dedup key (or the record of its id that makes a retry of the send
-- a no-op), a delay, a bound on the queue's backlog (its definition: _backlog.lua, the same
-- as redismq/backlog.py) and/or a task's id index, all at once.
-- KEYS[1] stream, KEYS[2] delayed zset, KEYS[3] dedup key (or the record of the id: its
-- own key, or the id index, with ARGV[2] 0), KEYS[4] queue counters hash, KEYS[5] the id
-- index key (with ARGV[6] 0: unused, any key of the queue),
-- KEYS[6..] per known group: its retry stream, its retry zset
-- ARGV[1] message id, ARGV[2] how long the dedup key (or id record) is kept, ms (0: none),
-- ARGV[3] 1: look for it first (a dedup key, or the id record of a send tried before),
-- ARGV[4] delay ms (0: now; due on the server's clock),
-- ARGV[5] most unfinished messages the queue may hold (0: no bound),
-- ARGV[6] how long the id index is kept, ms (0: no index), ARGV[7] the index's value,
-- ARGV[8] number of known groups G, ARGV[9..8+G] their names,
-- ARGV[9+G..] the entry's field/value pairs
-- Returns {message id, 1, entry id} when sent ({message id, 1} when delayed),
-- {what KEYS[3] holds, 0} for a duplicate (a dedup key's: the first id), {'', -1} when full.
if ARGV[3] == '1' then
  local first = redis.call('GET', KEYS[3])
  if first then
    redis.call('HINCRBY', KEYS[4], 'deduplicated', 1)
    return {first, 0}
  end
end
local ngroups = tonumber(ARGV[8])
local bound = tonumber(ARGV[5])
if bound > 0 then
  local groups = {}
  for i = 1, ngroups do
    groups[i] = {ARGV[8 + i], KEYS[4 + 2 * i], KEYS[5 + 2 * i]}
  end
  if queue_backlog(KEYS[1], KEYS[2], groups) >= bound then
    redis.call('HINCRBY', KEYS[4], 'refused', 1)
    return {'', -1}
  end
end
if ARGV[2] ~= '0' then
  redis.call('SET', KEYS[3], ARGV[1], 'PX', ARGV[2])
end
if ARGV[6] ~= '0' then
  redis.call('SET', KEYS[5], ARGV[7], 'PX', ARGV[6])
end
local first_field = 9 + ngroups
if ARGV[4] ~= '0' then
  redis.call('ZADD', KEYS[2], server_ms() + tonumber(ARGV[4]), pack(ARGV, first_field, #ARGV))
  return {ARGV[1], 1}
end
return {ARGV[1], 1, redis.call('XADD', KEYS[1], '*', unpack(ARGV, first_field))}
