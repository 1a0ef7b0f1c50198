-- Which of a queue's messages a group may run: 'd' done already (in the group's done
-- records), 'c' cancelled (in the queue's cancel marks), '.' to run; with `marks`, the
-- ones to run are recorded as running (scored by start time and attempt), and with
-- `horizon` > 0 marks older than that many ms are swept; with `keep`, a mark already there
-- stays as it is (a job judged again while it runs keeps its start and attempt). `ids[j]`
-- may be false (an entry without an id: it is left to run, and to fail as undecodable).
-- One character per message.
local function verdicts(done_key, cancel_key, running_key, ids, attempts, n, marks, horizon,
    keep)
  -- looked up in order, the replies read by position (an entry without an id asks for
  -- '', which no record is named: it is not one of them either way)
  local named, done, cancelled = {}, {}, {}
  for j = 1, n do
    named[j] = ids[j] or ''
  end
  if n > 0 then
    done = sliced('ZMSCORE', done_key, named)
    if redis.call('ZCARD', cancel_key) > 0 then
      cancelled = sliced('ZMSCORE', cancel_key, named)
    end
  end
  local now = marks and server_ms() or 0
  -- a mark's score is start ms × 1000 + attempt; a first attempt's, as text made once
  -- (see settle.lua's now_text)
  local first = string.format('%d', now) .. '001'
  local out, running = {}, {}
  for j = 1, n do
    local id = ids[j]
    if id and done[j] then
      out[j] = 'd'
    elseif id and cancelled[j] then
      out[j] = 'c'
    else
      out[j] = '.'
      if id and marks then
        local score = first
        if attempts[j] ~= 0 then
          score = now * 1000 + math.min(attempts[j] + 1, 999)
        end
        running[#running + 1] = score
        running[#running + 1] = id
      end
    end
  end
  sliced('ZADD', running_key, running, keep and 'NX' or nil)
  if marks and horizon > 0 then
    redis.call('ZREMRANGEBYSCORE', running_key, '-inf', (now - horizon) * 1000)
  end
  return table.concat(out)
end

-- The message id (false: none) and attempt of a stream entry, from its field/value list.
local function id_and_attempt(fields)
  local id, attempt = false, 0
  for x = 1, #fields - 1, 2 do
    if fields[x] == 'id' then
      id = fields[x + 1]
    elseif fields[x] == 'attempt' then
      attempt = tonumber(fields[x + 1]) or 0
    end
  end
  return id, attempt
end
