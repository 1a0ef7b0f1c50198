-- Renew the leases a consumer holds on pending entries (reset their idle time) without
-- taking an entry that another consumer has claimed meanwhile, and with them the
-- effect-once step claims their runs hold (steps.lua).
-- KEYS[1] stream, KEYS[2..] the steps hash of each entry flagged 1 below, in order
-- ARGV[1] group, ARGV[2] consumer, ARGV[3] claim ttl ms,
-- ARGV[4..] pairs: entry id, whether its run made step claims (0/1)
-- Returns the ids whose lease was lost (claimed by another consumer, or acknowledged).
local lost, mine, steps = {}, {}, {}
local k = 2
for i = 4, #ARGV, 2 do
  local id = ARGV[i]
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], id, id, 1)
  local held = #p == 1 and p[1][2] == ARGV[2]
  if held then mine[#mine + 1] = id else lost[#lost + 1] = id end
  if ARGV[i + 1] == '1' then
    if held then steps[#steps + 1] = {KEYS[k], id} end
    k = k + 1
  end
end
if #mine > 0 then
  local args = {'XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0}
  for _, id in ipairs(mine) do args[#args + 1] = id end
  args[#args + 1] = 'JUSTID'
  redis.call(unpack(args))
end
if #steps > 0 then
  local t = redis.call('TIME')
  local expires = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[3])
  for _, s in ipairs(steps) do
    local prefix = ARGV[2] .. '|' .. s[2] .. '|'
    local marks = redis.call('HGETALL', s[1])
    for j = 1, #marks, 2 do
      local value = marks[j + 1]
      local bar = string.find(value, '|', 1, true)
      if bar and string.sub(value, bar + 1, bar + #prefix) == prefix then
        redis.call('HSET', s[1], marks[j], expires .. string.sub(value, bar))
      end
    end
  end
end
return lost
