-- Binary-safe packing of a stream entry's field/value list into one string, so that a
-- delayed or retried message can wait in a sorted set: "<len>:<bytes>" repeated.
local function pack(list, first, last)
  local parts = {}
  for i = first, last do
    parts[#parts + 1] = #list[i] .. ':' .. list[i]
  end
  return table.concat(parts)
end

local function unpack_fields(s)
  local out, pos = {}, 1
  while pos <= #s do
    local colon = string.find(s, ':', pos, true)
    local n = tonumber(string.sub(s, pos, colon - 1))
    out[#out + 1] = string.sub(s, colon + 1, colon + n)
    pos = colon + n + 1
  end
  return out
end

-- The server's clock in ms: every due time and expiry is measured on it, never on a
-- client's clock (clients' clocks differ).
local function server_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
