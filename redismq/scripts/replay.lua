-- Put dead letters back for their group (only) with a fresh attempt count.
-- KEYS[1] dead-letter stream, KEYS[2] group's retry stream, KEYS[3] stats hash
-- ARGV[1] most entries to replay, ARGV[2..] entry ids to replay (none: the oldest ones)
-- Returns the number replayed.
local entries
if #ARGV > 1 then
  entries = {}
  for i = 2, #ARGV do
    local e = redis.call('XRANGE', KEYS[1], ARGV[i], ARGV[i])
    if #e > 0 then entries[#entries + 1] = e[1] end
  end
else
  entries = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', tonumber(ARGV[1]))
end
for _, e in ipairs(entries) do
  local out = {}
  local f = e[2]
  for i = 1, #f, 2 do
    local name = f[i]
    if string.sub(name, 1, 5) ~= 'dead_' and name ~= 'attempt' then
      out[#out + 1] = name
      out[#out + 1] = f[i + 1]
    end
  end
  redis.call('XADD', KEYS[2], '*', unpack(out))
  redis.call('XDEL', KEYS[1], e[1])
end
if #entries > 0 then redis.call('HINCRBY', KEYS[3], 'dead', -#entries) end
return #entries
