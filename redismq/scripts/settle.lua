-- Record successful (or cancelled) outcomes of one queue for one group: XACK, done record,
-- counters and (for tasks) the outcome their senders wait for, all at once. Only entries
-- the consumer still owns are settled; the others (taken over by another consumer, or
-- settled already) are left untouched and reported.
-- KEYS[1] stream, KEYS[2] group's retry stream, KEYS[3] done zset, KEYS[4] stats hash,
-- KEYS[5] the queue's cancel marks zset, KEYS[6] the queue's zset of awaited job ids,
-- KEYS[7..] per task message (outcome neither '' nor '~'), in message order: its outcome
--   list and its job hash (a job cancelled while it finished reads done, with its result)
-- KEYS[#KEYS] (last) the group's running zset: settled jobs no longer read running
-- ARGV[1] group, ARGV[2] consumer, ARGV[3] done ttl ms, ARGV[4] result ttl ms,
-- ARGV[5..] per message 4 values: message id, entry id, from retry stream (0/1),
--   outcome: '' (a plain message), '~' (cancelled), 'N' (a task that returned None: its
--   outcome is stored only if someone waits for it), else the JSON outcome to store
-- Done records are scored by the server's clock (never a worker's: clocks differ).
-- Returns {completed, duplicates, cancelled, {positions (1-based) of the entries not owned}}
local group, consumer, now = ARGV[1], ARGV[2], server_ms()
local done_ttl, result_ttl = ARGV[3], ARGV[4]
local completed, duplicates, cancelled, k = 0, 0, 0, 7
local main, retried, silent, silent_keys, lost, settled = {}, {}, {}, {}, {}, {}

-- The entries among `ids` of `stream` that the consumer holds, as a set: one XPENDING over
-- the consumer's entries between the lowest and the highest id (paged), not one per entry.
local function held(stream, ids)
  local set = {}
  if #ids == 0 then return set end
  local lo, hi = ids[1], ids[1]
  for _, id in ipairs(ids) do
    if id_less(id, lo) then lo = id end
    if id_less(hi, id) then hi = id end
  end
  local page = #ids + 64
  while true do
    local got = redis.call('XPENDING', stream, group, lo, hi, page, consumer)
    for _, p in ipairs(got) do set[p[1]] = true end
    if #got < page then return set end
    lo = '(' .. got[#got][1]
  end
end

local ids = {{}, {}}
for i = 5, #ARGV, 4 do
  local from = ids[1]
  if ARGV[i + 2] == '1' then from = ids[2] end
  from[#from + 1] = ARGV[i + 1]
end
local mine = {held(KEYS[1], ids[1]), held(KEYS[2], ids[2])}

for i = 5, #ARGV, 4 do
  local mid, eid, src, outcome = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local owned = mine[1][eid]
  if src == '1' then owned = mine[2][eid] end
  if not owned then
    lost[#lost + 1] = (i - 1) / 4
  else
    if src == '1' then retried[#retried + 1] = eid else main[#main + 1] = eid end
    settled[#settled + 1] = mid
    local first = redis.call('ZADD', KEYS[3], 'NX', now, mid) == 1
    if outcome == '~' then
      if first then cancelled = cancelled + 1 end
    elseif first then
      completed = completed + 1
      if outcome ~= '' and redis.call('ZSCORE', KEYS[5], mid) then
        -- Cancelled while it finished: it did finish (the mark stays for other groups).
        redis.call('DEL', KEYS[k])
        redis.call('HSET', KEYS[k + 1], 'status', 'done')
        redis.call('PEXPIRE', KEYS[k + 1], result_ttl)
        if outcome == 'N' then outcome = '{"status":"done","result":null}' end
      end
      if outcome == 'N' then
        silent[#silent + 1] = mid
        silent_keys[#silent_keys + 1] = KEYS[k]
      elseif outcome ~= '' then
        redis.call('RPUSH', KEYS[k], outcome)
        redis.call('PEXPIRE', KEYS[k], result_ttl)
      end
    else
      duplicates = duplicates + 1
    end
  end
  if ARGV[i + 3] ~= '' and ARGV[i + 3] ~= '~' then k = k + 2 end
end
if #silent > 0 then
  local awaited = redis.call('ZMSCORE', KEYS[6], unpack(silent))
  for i = 1, #silent do
    if awaited[i] then
      redis.call('RPUSH', silent_keys[i], '{"status":"done","result":null}')
      redis.call('PEXPIRE', silent_keys[i], result_ttl)
      redis.call('ZREM', KEYS[6], silent[i])
    end
  end
end
if #settled > 0 then redis.call('ZREM', KEYS[#KEYS], unpack(settled)) end
if #main > 0 then redis.call('XACK', KEYS[1], group, unpack(main)) end
if #retried > 0 then
  redis.call('XACK', KEYS[2], group, unpack(retried))
  redis.call('XDEL', KEYS[2], unpack(retried))
end
if completed > 0 then redis.call('HINCRBY', KEYS[4], 'done', completed) end
if duplicates > 0 then redis.call('HINCRBY', KEYS[4], 'duplicates', duplicates) end
if cancelled > 0 then
  redis.call('HINCRBY', KEYS[4], 'cancelled', cancelled)
  redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', now)  -- expired cancel marks
end
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - tonumber(done_ttl))
return {completed, duplicates, cancelled, lost}
