-- Renew the leases a consumer holds on pending entries (reset their idle time) without
-- taking an entry that another consumer has claimed meanwhile.
-- KEYS[1] stream
-- ARGV[1] group, ARGV[2] consumer, ARGV[3..] entry ids
-- Returns the ids whose lease was lost (claimed by another consumer, or acknowledged).
local lost, mine = {}, {}
for i = 3, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if #p == 1 and p[1][2] == ARGV[2] then mine[#mine + 1] = ARGV[i] else lost[#lost + 1] = ARGV[i] end
end
if #mine > 0 then
  local args = {'XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0}
  for _, id in ipairs(mine) do args[#args + 1] = id end
  args[#args + 1] = 'JUSTID'
  redis.call(unpack(args))
end
return lost
