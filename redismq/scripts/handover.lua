-- Hand fetched messages of an ordered group's queue over to the queue's next holder: they
-- stay pending, and each one's delivery counter is set to the attempts that ran, so that
-- the next holder's takeover (which adds one delivery) counts a handover of a message that
-- never started as no attempt.
-- KEYS[1] stream (the queue's stream or the group's retry stream)
-- ARGV[1] group, ARGV[2] consumer, then pairs: entry id, the message's attempt number now
-- Returns how many were handed over (an entry another consumer holds now is left alone).
local n = 0
for i = 3, #ARGV, 2 do
  local id = ARGV[i]
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], id, id, 1)
  if #p == 1 and p[1][2] == ARGV[2] then
    local base = 0
    local e = redis.call('XRANGE', KEYS[1], id, id)
    if #e == 1 then
      local f = e[1][2]
      for j = 1, #f, 2 do
        if f[j] == 'attempt' then base = tonumber(f[j + 1]) or 0 end
      end
    end
    local ran = math.max(0, tonumber(ARGV[i + 1]) - base)
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, id, 'RETRYCOUNT', ran, 'JUSTID')
    n = n + 1
  end
end
return n
