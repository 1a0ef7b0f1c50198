-- Read up to a number of new entries for one consumer of a group from streams taken in
-- turn, never more: XREADGROUP's COUNT applies per stream, so each stream is asked for
-- its share of what is still wanted (one entry each from the first ones when fewer are
-- wanted than there are streams), and the streams that gave all they were asked for are
-- asked again, until enough is read or every stream is empty. One round trip, however
-- many streams are empty. The turn is kept here, shared by every consumer of the group
-- that reads these streams, in every process: the next read starts after the last
-- stream that gave entries.
-- KEYS[1] the turn (an index into the streams), KEYS[2..n+1] the streams, in their order
-- ARGV[1] group, ARGV[2] consumer, ARGV[3] how many entries at most
-- Returns {{position (1-based, in KEYS[2..]), {{entry id, {field, value, ...}}, ...}}, ...}
local group, consumer, left = ARGV[1], ARGV[2], tonumber(ARGV[3])

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

local n_streams = #KEYS - 1
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
      got[#got + 1] = {a[1], entries}
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
