-- Send one message with a dedup key, a delay and/or a bound on the queue's backlog.
-- KEYS[1] stream, KEYS[2] delayed zset, KEYS[3] dedup key, KEYS[4] queue counters hash,
-- KEYS[5..] per known group: its retry stream, its retry zset
-- ARGV[1] message id, ARGV[2] dedup window ms (0: no dedup), ARGV[3] due ms (0: now),
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
  -- The backlog: what the slowest group has not finished (pending and undelivered entries,
  -- its retries), or the whole stream when no group reads it yet, plus delayed messages.
  local retrying = {}
  for i = 1, ngroups do
    retrying[ARGV[5 + i]] = redis.call('XLEN', KEYS[3 + 2 * i]) + redis.call('ZCARD', KEYS[4 + 2 * i])
  end
  local backlog = 0
  local ok, groups = pcall(redis.call, 'XINFO', 'GROUPS', KEYS[1])
  if ok and #groups > 0 then
    for _, g in ipairs(groups) do
      local info = {}
      for i = 1, #g, 2 do info[g[i]] = g[i + 1] end
      local lag = tonumber(info['lag']) or redis.call('XLEN', KEYS[1])
      backlog = math.max(backlog, tonumber(info['pending']) + lag + (retrying[info['name']] or 0))
    end
  else
    backlog = redis.call('XLEN', KEYS[1])
  end
  backlog = backlog + redis.call('ZCARD', KEYS[2])
  if backlog >= bound then
    redis.call('HINCRBY', KEYS[4], 'refused', 1)
    return {'', -1}
  end
end
if ARGV[2] ~= '0' then
  redis.call('SET', KEYS[3], ARGV[1], 'PX', ARGV[2])
end
local first_field = 6 + ngroups
if ARGV[3] ~= '0' then
  redis.call('ZADD', KEYS[2], ARGV[3], pack(ARGV, first_field, #ARGV))
else
  redis.call('XADD', KEYS[1], '*', unpack(ARGV, first_field))
end
return {ARGV[1], 1}
