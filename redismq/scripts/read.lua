-- Read up to a number of new entries for one consumer of a group from streams taken in
-- turn, never more: XREADGROUP's COUNT applies per stream, so each stream is asked for
-- its share of what is still wanted (one entry each from the first ones when fewer are
-- wanted than there are streams), and the streams that gave all they were asked for are
-- asked again, until enough is read or every stream is empty. One round trip, however
-- many streams are empty. The turn is kept here, shared by every consumer of the group
-- that reads these streams, in every process: the next read starts after the last
-- stream that gave entries.
-- In the same call, each entry read is checked against its group's done records and its
-- queue's cancel marks (a job cancelled while queued keeps its entry; a message sent again
-- under the id of one completed is a new entry of it), and the others can be recorded as
-- running (task subscriptions: a job reads running from its receive on).
-- The reply also says, per stream, how many takeovers its queue's group has counted (see
-- settle.lua: a settle that finds the same count knows its entries are still its own).
-- KEYS[1] the turn (an index into the streams), KEYS[2..n+1] the streams, in their order,
-- KEYS[n+2..5n+1] per stream: its group's done zset, its queue's cancel marks, its group's
--   running zset, its queue's count of takeovers for the group
-- ARGV[1] group, ARGV[2] consumer, ARGV[3] how many entries at most,
-- ARGV[4] 1: record the jobs read as running, ARGV[5] also sweep running marks older than
--   this many ms (0: not now)
-- Returns {{position (1-based, in KEYS[2..]), {{entry id, {field, value, ...}}, ...},
--   verdicts: one character per entry, '.' to run, 'd' done already, 'c' cancelled,
--   takeovers counted}, ...}
local group, consumer, left = ARGV[1], ARGV[2], tonumber(ARGV[3])
local marks, horizon = ARGV[4] == '1', tonumber(ARGV[5])

-- The entries of one stream's XREADGROUP reply: {{stream, entries}} (Redis, Valkey), or
-- {stream, entries} (fakeredis, the unit tests' double); nothing: false or {}.
local function entries_of(reply)
  if not reply or #reply == 0 then
    return {}
  end
  if type(reply[1]) == 'table' then
    return reply[1][2]
  end
  return reply[2]
end

local n_streams = (#KEYS - 1) / 5
-- The position in KEYS of stream `i`'s side keys.
local function side_keys(i)
  return n_streams + 2 + 4 * (i - 1)
end
-- The verdicts of the entries read from stream `i` (see _verdicts.lua).
local function entry_verdicts(i, entries)
  local base = side_keys(i)
  local ids, attempts = {}, {}
  for j, entry in ipairs(entries) do
    ids[j], attempts[j] = id_and_attempt(entry[2])
  end
  return verdicts(KEYS[base], KEYS[base + 1], KEYS[base + 2], ids, attempts, #entries, marks,
    horizon)
end
local start = tonumber(redis.call('GET', KEYS[1]) or '0') % n_streams
local candidates = {}
for i = 1, n_streams do
  candidates[i] = (start + i - 1) % n_streams + 1
end
local got, last = {}, 0
while left > 0 and #candidates > 0 do
  local n = #candidates
  local asked, next_round = {}, {}
  if left >= n then
    for j, i in ipairs(candidates) do
      asked[j] = {i, math.floor(left / n) + ((j - 1) < (left % n) and 1 or 0)}
    end
  else
    for j = 1, left do
      asked[j] = {candidates[j], 1}
    end
    for j = left + 1, n do
      next_round[#next_round + 1] = candidates[j]
    end
  end
  for _, a in ipairs(asked) do
    local reply = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', a[2],
      'STREAMS', KEYS[a[1] + 1], '>')
    local entries = entries_of(reply)
    if #entries > 0 then
      local takeovers = redis.call('GET', KEYS[side_keys(a[1]) + 3]) or '0'
      got[#got + 1] = {a[1], entries, entry_verdicts(a[1], entries), takeovers}
      left = left - #entries
      last = a[1]
    end
    if #entries == a[2] then
      next_round[#next_round + 1] = a[1]
    end
  end
  candidates = next_round
end
if last > 0 then
  redis.call('SET', KEYS[1], last % n_streams)
end
return got
