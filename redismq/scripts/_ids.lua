-- Stream entry ids compared as ids ("ms-seq"), not as strings: parsed once with id_parts
-- where one id is compared many times.
local function id_parts(id)
  local ms, seq = string.match(id, '(%d+)-(%d+)')
  return {tonumber(ms), tonumber(seq), id}
end

local function parts_less(a, b)
  return a[1] < b[1] or (a[1] == b[1] and a[2] < b[2])
end

local function id_less(a, b)
  return parts_less(id_parts(a), id_parts(b))
end
