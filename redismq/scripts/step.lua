-- Effect-once steps of a job: claim a step before its side effect, mark it done after;
-- 'finish' gives the steps hashes of finished messages (KEYS) the done window (ARGV[2] ms).
-- KEYS[1] the message's steps hash (for its group), KEYS[2] the stream the run's entry is in
-- ARGV[1] 'claim' | 'done' | 'release', ARGV[2] step name, ARGV[3] group,
-- ARGV[4] consumer, ARGV[5] entry id, ARGV[6] run token, ARGV[7] claim ttl ms
-- A claim is stored as '<expires ms>|<consumer>|<entry id>|<token>' (server time) and
-- renewed with the run's lease (renew.lua); 'done' marks the effect as happened.
-- The run must still hold its entry (the owner in the group's PEL); if another consumer
-- took the message over, claim returns 'lost' and does nothing.
-- claim returns 'lost', 'done' (the effect happened already: skip it), {'busy', ms left}
-- (another run holds a live claim) or 'claimed'.
-- done writes the mark whatever the claim (the effect did happen) and returns 'done', or
-- 'lost' if the run no longer holds its entry. release drops the run's own claim (1) or
-- nothing (0).
if ARGV[1] == 'finish' then
  for i = 1, #KEYS do redis.call('PEXPIRE', KEYS[i], ARGV[2]) end
  return #KEYS
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local name, consumer, eid = ARGV[2], ARGV[4], ARGV[5]
local run = consumer .. '|' .. eid .. '|' .. ARGV[6]
local function holds_entry()
  local p = redis.call('XPENDING', KEYS[2], ARGV[3], eid, eid, 1)
  return #p == 1 and p[1][2] == consumer
end
local value = redis.call('HGET', KEYS[1], name)
local expires, holder = 0, nil
if value and value ~= 'done' then
  local bar = string.find(value, '|', 1, true)
  expires, holder = tonumber(string.sub(value, 1, bar - 1)), string.sub(value, bar + 1)
end
if ARGV[1] == 'claim' then
  if not holds_entry() then return 'lost' end
  if value == 'done' then return 'done' end
  if holder and holder ~= run and expires > now then return {'busy', expires - now} end
  redis.call('HSET', KEYS[1], name, (now + tonumber(ARGV[7])) .. '|' .. run)
  return 'claimed'
end
if ARGV[1] == 'done' then
  redis.call('HSET', KEYS[1], name, 'done')
  if holds_entry() then return 'done' end
  return 'lost'
end
if holder == run then
  redis.call('HDEL', KEYS[1], name)
  return 1
end
return 0
