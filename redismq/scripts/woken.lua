-- The verdicts (see _verdicts.lua) of what a blocking XREADGROUP, sent just before this
-- call in the same round trip, delivered to its consumer. Redis runs this call as soon as
-- the read wakes, so a job is judged, and recorded as running, in the read's own round
-- trip. Per stream, the entry judged is the consumer's one pending entry there: a stream
-- where it holds none or several is left out (what the read brought from it is judged
-- apart, by check.lua), and so is a stream or group that is gone.
-- KEYS[1] .. KEYS[n] the streams, KEYS[n+1..4n] per stream: its group's done zset, its
--   queue's cancel marks, its group's running zset
-- ARGV[1] group, ARGV[2] consumer, ARGV[3] 1: record the ones to run as running,
-- ARGV[4..3+n] per stream: also sweep running marks older than this many ms (0: not now)
-- Returns per stream {entry id, verdict} ('.' to run, 'd' done already, 'c' cancelled),
--   or {} where it judged nothing
local group, consumer, marks = ARGV[1], ARGV[2], ARGV[3] == '1'
local n = #KEYS / 4
local out = {}
for i = 1, n do
  out[i] = {}
  local ok, pending = pcall(redis.call, 'XPENDING', KEYS[i], group, '-', '+', 2, consumer)
  if ok and #pending == 1 then
    local entry_id = pending[1][1]
    local found = redis.call('XRANGE', KEYS[i], entry_id, entry_id)
    if #found == 1 then
      local id, attempt = id_and_attempt(found[1][2])
      local base = n + 3 * (i - 1)
      -- a mark already there is kept: the entry can be a job still running (the read
      -- brought nothing from this stream), judged again at each wait
      out[i] = {entry_id, verdicts(KEYS[base + 1], KEYS[base + 2], KEYS[base + 3], {id},
        {attempt}, 1, marks, tonumber(ARGV[3 + i]), true)}
    end
  end
end
return out
