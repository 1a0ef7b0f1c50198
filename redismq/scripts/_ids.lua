-- Whether stream entry id `a` ("ms-seq") comes before `b`, compared as numbers, not as
-- strings, without parsing them (no table, no number: settle compares every id it
-- settles): ids have no leading zeros, so of two parts the shorter is the smaller.
local function id_less(a, b)
  local da, db = string.find(a, '-', 1, true), string.find(b, '-', 1, true)
  if da ~= db then
    return da < db
  end
  if #a == #b then
    return a < b
  end
  local ms_a, ms_b = string.sub(a, 1, da), string.sub(b, 1, db)
  if ms_a ~= ms_b then
    return ms_a < ms_b
  end
  return #a < #b
end
