-- The verdicts (see _verdicts.lua) of messages of one queue that reached a consumer
-- without the read script: by a blocking read, or taken over.
-- KEYS[1] the group's done zset, KEYS[2] the queue's cancel marks, KEYS[3] the group's
-- running zset
-- ARGV[1] 1: record the ones to run as running, ARGV[2] also sweep running marks older
--   than this many ms (0: not now), ARGV[3..] per message: its id, its attempt
-- Returns one character per message: '.' to run, 'd' done already, 'c' cancelled
local ids, attempts = {}, {}
for i = 3, #ARGV, 2 do
  ids[#ids + 1] = ARGV[i]
  attempts[#attempts + 1] = tonumber(ARGV[i + 1])
end
return verdicts(KEYS[1], KEYS[2], KEYS[3], ids, attempts, #ids, ARGV[1] == '1',
  tonumber(ARGV[2]))
