-- Record successful (or cancelled) outcomes of one queue for one group: XACK, done record,
-- counters and (for tasks) the outcome their senders wait for, all at once. Only entries
-- the consumer still owns are settled; the others (taken over by another consumer, or
-- settled already) are left untouched and reported.
-- KEYS[1] stream, KEYS[2] group's retry stream, KEYS[3] done zset, KEYS[4] stats hash,
-- KEYS[5] the queue's cancel marks zset, KEYS[6] the queue's zset of awaited job ids,
-- KEYS[7..] per task message (outcome neither '' nor '~'), in message order: its outcome
--   list and its job hash (a job cancelled while it finished reads done, with its result)
-- KEYS[#KEYS - 1] the queue's count of takeovers for the group (see below)
-- KEYS[#KEYS] (last) the group's running zset: settled jobs no longer read running
-- ARGV[1] group, ARGV[2] consumer, ARGV[3] done ttl ms, ARGV[4] result ttl ms,
-- ARGV[5] the count of takeovers all the messages were read with ('': unknown, or not one),
-- ARGV[6..] per message 4 values: message id, entry id, from retry stream (0/1),
--   outcome: '' (a plain message), '~' (cancelled), 'N' (a task that returned None: its
--   outcome is stored only if someone waits for it), else the JSON outcome to store
-- Done records are scored by the server's clock (never a worker's: clocks differ).
-- Returns {completed, duplicates, cancelled, {positions (1-based) of the entries not owned}}
local group, consumer, now = ARGV[1], ARGV[2], server_ms()
-- Every takeover of an entry (to another consumer: fetching.py), and every letting go of
-- one (a retry, a dead letter, a release), raises the count in the same step: while the
-- count is what it was at the read, each entry read is still pending with its reader or
-- was settled by it, and the consumer's pending list need not be searched (see held).
local untaken = ARGV[5] ~= '' and (redis.call('GET', KEYS[#KEYS - 1]) or '0') == ARGV[5]
-- Scores go to Redis as text made once: a Lua number is formatted with printf's %.17g at
-- every call, the dearest step of a done record.
local now_text = string.format('%d', now)
local done_ttl, result_ttl = ARGV[3], ARGV[4]
local completed, duplicates, cancelled = 0, 0, 0
local main, retried, silent, silent_keys, lost, settled = {}, {}, {}, {}, {}, {}

-- The entries among `ids` of `stream` that the consumer holds, as a set: one XPENDING over
-- the consumer's entries between the lowest and the highest id (paged), not one per entry.
-- Untaken, they are acknowledged here: all of them were still pending, or none (this
-- settle was made before: a call sent again after a dropped connection), since nothing
-- else acknowledges an entry without counting.
local function held(stream, ids)
  local set = {}
  if untaken then
    local acked = 0
    for at = 1, #ids, 1000 do
      acked = acked + redis.call('XACK', stream, group, unpack(ids, at, math.min(at + 999, #ids)))
    end
    if acked > 0 then
      for _, id in ipairs(ids) do set[id] = true end
    end
    return set
  end
  if #ids == 0 then return set end
  local lo, hi = ids[1], ids[1]
  for _, id in ipairs(ids) do
    if id_less(id, lo) then lo = id end
    if id_less(hi, id) then hi = id end
  end
  local page, from = #ids + 64, lo
  while true do
    local got = redis.call('XPENDING', stream, group, from, hi, page, consumer)
    for _, p in ipairs(got) do set[p[1]] = true end
    if #got < page then return set end
    from = '(' .. got[#got][1]
  end
end

-- The messages: message n's values are ARGV[4n + 2 .. 4n + 5] (no table per message: a
-- table costs more than all the rest of its settle); task_keys[n] is where its task keys
-- are (false: none).
local count, task_keys, ids, k = (#ARGV - 5) / 4, {}, {{}, {}}, 7
for n = 1, count do
  local a = 4 * n + 2
  local outcome = ARGV[a + 3]
  if outcome ~= '' and outcome ~= '~' then
    task_keys[n] = k
    k = k + 2
  else
    task_keys[n] = false
  end
  local from = ids[1]
  if ARGV[a + 2] == '1' then from = ids[2] end
  from[#from + 1] = ARGV[a + 1]
end
local mine = {held(KEYS[1], ids[1]), held(KEYS[2], ids[2])}
local owned = {}
for n = 1, count do
  local a = 4 * n + 2
  local eid, retry = ARGV[a + 1], ARGV[a + 2] == '1'
  local set = mine[1]
  if retry then set = mine[2] end
  if set[eid] then
    owned[#owned + 1] = n
    settled[#settled + 1] = ARGV[a]
    if retry then retried[#retried + 1] = eid else main[#main + 1] = eid end
  else
    lost[#lost + 1] = n
  end
end

-- Done records: a message already recorded done (or twice in this call) is a duplicate.
local recorded = sliced('ZMSCORE', KEYS[3], settled)
local marks = {}
if #owned > 0 and redis.call('ZCARD', KEYS[5]) > 0 then
  marks = sliced('ZMSCORE', KEYS[5], settled)
end
local seen, fresh = {}, {}
for i, n in ipairs(owned) do
  local mid, outcome, at = settled[i], ARGV[4 * n + 5], task_keys[n]
  local first = not recorded[i] and not seen[mid]
  seen[mid] = true
  if first then
    fresh[#fresh + 1] = now_text
    fresh[#fresh + 1] = mid
  end
  if not first then
    duplicates = duplicates + 1
  elseif outcome == '~' then
    cancelled = cancelled + 1
  else
    completed = completed + 1
    if at and marks[i] then
      -- Cancelled while it finished: it did finish (the mark stays for other groups).
      redis.call('DEL', KEYS[at])
      redis.call('HSET', KEYS[at + 1], 'status', 'done')
      redis.call('PEXPIRE', KEYS[at + 1], result_ttl)
      if outcome == 'N' then outcome = '{"status":"done","result":null}' end
    end
    if outcome == 'N' then
      silent[#silent + 1] = mid
      silent_keys[#silent_keys + 1] = KEYS[at]
    elseif outcome ~= '' then
      redis.call('RPUSH', KEYS[at], outcome)
      redis.call('PEXPIRE', KEYS[at], result_ttl)
    end
  end
end
sliced('ZADD', KEYS[3], fresh, 'NX')
if #silent > 0 then
  local awaited = sliced('ZMSCORE', KEYS[6], silent)
  for i = 1, #silent do
    if awaited[i] then
      redis.call('RPUSH', silent_keys[i], '{"status":"done","result":null}')
      redis.call('PEXPIRE', silent_keys[i], result_ttl)
      redis.call('ZREM', KEYS[6], silent[i])
    end
  end
end
sliced('ZREM', KEYS[#KEYS], settled)
if not untaken then  -- else acknowledged by held
  sliced('XACK', KEYS[1], main, group)
  sliced('XACK', KEYS[2], retried, group)
end
sliced('XDEL', KEYS[2], retried)
if completed > 0 then redis.call('HINCRBY', KEYS[4], 'done', completed) end
if duplicates > 0 then redis.call('HINCRBY', KEYS[4], 'duplicates', duplicates) end
if cancelled > 0 then
  redis.call('HINCRBY', KEYS[4], 'cancelled', cancelled)
  redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', now)  -- expired cancel marks
end
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - tonumber(done_ttl))
return {completed, duplicates, cancelled, lost}
