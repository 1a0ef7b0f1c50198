-- Which of a queue's messages a group may run: 'd' done already (in the group's done
-- records), 'c' cancelled (in the queue's cancel marks), '.' to run; with `marks`, the
-- ones to run are recorded as running (scored by start time and attempt), and with
-- `horizon` > 0 marks older than that many ms are swept. `ids[j]` may be false (an entry
-- without an id: it is left to run, and to fail as undecodable). One character per message.
local function verdicts(done_key, cancel_key, running_key, ids, attempts, n, marks, horizon)
  local named = {}
  for j = 1, n do
    if ids[j] then named[#named + 1] = ids[j] end
  end
  local done, cancelled = {}, {}
  if #named > 0 then
    local scores = sliced('ZMSCORE', done_key, named)
    for k, id in ipairs(named) do done[id] = scores[k] end
    if redis.call('ZCARD', cancel_key) > 0 then
      local flags = sliced('ZMSCORE', cancel_key, named)
      for k, id in ipairs(named) do cancelled[id] = flags[k] end
    end
  end
  local now = marks and server_ms() or 0
  -- a mark's score, start ms × 1000 + attempt, as text (see settle.lua's now_text)
  local stamp = string.format('%d', now)
  local first = stamp .. '001'
  local out, running = {}, {}
  for j = 1, n do
    local id = ids[j]
    if id and done[id] then
      out[j] = 'd'
    elseif id and cancelled[id] then
      out[j] = 'c'
    else
      out[j] = '.'
      if id and marks then
        local score = first
        if attempts[j] > 0 then
          score = string.format('%s%03d', stamp, math.min(attempts[j] + 1, 999))
        end
        running[#running + 1] = score
        running[#running + 1] = id
      end
    end
  end
  sliced('ZADD', running_key, running)
  if marks and horizon > 0 then
    redis.call('ZREMRANGEBYSCORE', running_key, '-inf', (now - horizon) * 1000)
  end
  return table.concat(out)
end
