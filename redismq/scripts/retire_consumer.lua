-- Retire a consumer that is gone (its process died): make the entries it still holds on one
-- stream claimable at once (idle time set to ARGV[3], delivery count unchanged: the next
-- XAUTOCLAIM counts the lost delivery), then delete it from the group if it holds nothing
-- (XGROUP DELCONSUMER would drop what it holds from the PEL).
-- KEYS[1] stream
-- ARGV[1] group, ARGV[2] consumer, ARGV[3] idle time to set in ms (0: leave its entries)
-- Returns {entries made claimable, 1 if the consumer was deleted else 0}
local group, consumer, idle = ARGV[1], ARGV[2], tonumber(ARGV[3])
local expired, start = 0, '-'
while idle > 0 do
  local page = redis.call('XPENDING', KEYS[1], group, start, '+', 100, consumer)
  if #page == 0 then break end
  local args = {'XCLAIM', KEYS[1], group, consumer, 0}
  for _, p in ipairs(page) do args[#args + 1] = p[1] end
  args[#args + 1] = 'IDLE'
  args[#args + 1] = idle
  args[#args + 1] = 'JUSTID'
  redis.call(unpack(args))
  expired = expired + #page
  start = '(' .. page[#page][1]
end
if #redis.call('XPENDING', KEYS[1], group, '-', '+', 1, consumer) > 0 then
  return {expired, 0}
end
redis.call('XGROUP', 'DELCONSUMER', KEYS[1], group, consumer)
return {expired, 1}
