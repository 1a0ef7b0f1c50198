-- Effect-once steps of a job: claim a step before its side effect, mark it done after.
-- KEYS[1] step key
-- ARGV[1] 'claim' | 'done' | 'release', ARGV[2] owner (one run of the job), ARGV[3] ttl ms
-- claim returns 'done' (the effect happened already: skip it), 'busy' (another live run
-- holds it) or 'claimed'; done and release return 1 if the caller held the claim, else 0.
-- A done mark whose claim has expired meanwhile (a slow effect) is still written: the
-- effect did happen.
local value = redis.call('GET', KEYS[1])
if ARGV[1] == 'claim' then
  if value == 'done' then return 'done' end
  if value and value ~= ARGV[2] then return 'busy' end
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 'claimed'
end
if ARGV[1] == 'done' and value == false then value = ARGV[2] end
if value ~= ARGV[2] then return 0 end
if ARGV[1] == 'done' then
  redis.call('SET', KEYS[1], 'done', 'PX', ARGV[3])
else
  redis.call('DEL', KEYS[1])
end
return 1
