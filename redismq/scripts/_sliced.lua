-- `command key [extra] ...list` in slices (Lua's unpack takes a few thousand values at
-- most), the replies of the slices joined (one slice's reply as it is: no copy).
local function sliced(command, key, list, extra)
  local function call(at, last)
    if extra then
      return redis.call(command, key, extra, unpack(list, at, last))
    end
    return redis.call(command, key, unpack(list, at, last))
  end
  if #list == 0 then
    return {}
  end
  if #list <= 1000 then
    local reply = call(1, #list)
    return type(reply) == 'table' and reply or {}
  end
  local out = {}
  for at = 1, #list, 1000 do
    local reply = call(at, math.min(at + 999, #list))
    if type(reply) == 'table' then
      for i = 1, #reply do out[#out + 1] = reply[i] end
    end
  end
  return out
end
