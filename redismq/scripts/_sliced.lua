-- `command key [extra] ...list` in slices (Lua's unpack takes a few thousand values at
-- most), the replies of the slices joined.
local function sliced(command, key, list, extra)
  local out = {}
  for at = 1, #list, 1000 do
    local last = math.min(at + 999, #list)
    local reply
    if extra then
      reply = redis.call(command, key, extra, unpack(list, at, last))
    else
      reply = redis.call(command, key, unpack(list, at, last))
    end
    if type(reply) == 'table' then
      for i = 1, #reply do out[#out + 1] = reply[i] end
    end
  end
  return out
end
