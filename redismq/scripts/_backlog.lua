-- The backlog of one queue, as redismq/backlog.py defines it (tests/test_backlog.py holds
-- the two equal). Per group, what it has not finished: undelivered entries of the stream
-- (all of them when the group does not exist there yet; never more than the stream holds),
-- pending entries, its retry stream (the larger of its length and its pending count), its
-- retry zset; plus the queue's delayed messages. The queue's backlog is the largest of its
-- groups' (with no group: the stream's length) plus the delayed messages.
-- stream, delayed: key names; groups: a list of {name, retry stream key, retry zset key}.
-- Returns the queue's backlog and the list of each group's backlog.
local function queue_backlog(stream, delayed, groups)
  local length = redis.call('XLEN', stream)
  local infos = {}
  local ok, reply = pcall(redis.call, 'XINFO', 'GROUPS', stream)
  if ok then
    for _, g in ipairs(reply) do
      local info = {}
      for i = 1, #g, 2 do info[g[i]] = g[i + 1] end
      infos[info['name']] = info
    end
  end
  local waiting = redis.call('ZCARD', delayed)
  local worst, each = nil, {}
  for _, g in ipairs(groups) do
    local info = infos[g[1]]
    local undelivered, pending = length, 0
    if info then
      pending = tonumber(info['pending'])
      if info['lag'] then
        undelivered = math.min(tonumber(info['lag']), length)
      else  -- the server cannot tell (entries deleted by hand): count them
        undelivered = #redis.call('XRANGE', stream, '(' .. info['last-delivered-id'], '+')
      end
    end
    local retry_len = redis.call('XLEN', g[2])
    local retry_pending = 0
    local has_group, summary = pcall(redis.call, 'XPENDING', g[2], g[1])
    if has_group then retry_pending = tonumber(summary[1]) end
    local n = undelivered + pending + math.max(retry_len, retry_pending)
      + redis.call('ZCARD', g[3]) + waiting
    each[#each + 1] = n
    if worst == nil or n > worst then worst = n end
  end
  return worst or (length + waiting), each
end
