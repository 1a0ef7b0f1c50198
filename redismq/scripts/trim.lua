-- Trim a queue's stream without removing any entry that some group still needs.
-- Keeps at most ARGV[1] entries that every group has acknowledged (so that a group created
-- later still finds recent history); with a hard cap ARGV[2] > 0, also drops the oldest
-- needed entries beyond it and counts them as dropped.
-- A group registered for the topic (ARGV[3..]) that has no group on this stream yet (its
-- workers never ran, or the queue was added later) will start at the oldest entry: while
-- one is missing, nothing is trimmed but what the hard cap drops.
-- KEYS[1] stream, KEYS[2] queue counters hash
-- ARGV[1] entries to keep, ARGV[2] hard cap (0: none), ARGV[3..] registered group names
-- Returns {trimmed, dropped}
local keep, cap = tonumber(ARGV[1]), tonumber(ARGV[2])
if redis.call('EXISTS', KEYS[1]) == 0 then return {0, 0} end

local function id_less(a, b)
  local am, as = string.match(a, '(%d+)-(%d+)')
  local bm, bs = string.match(b, '(%d+)-(%d+)')
  am, as, bm, bs = tonumber(am), tonumber(as), tonumber(bm), tonumber(bs)
  return am < bm or (am == bm and as < bs)
end

local function next_id(id)
  local ms, seq = string.match(id, '(%d+)-(%d+)')
  return ms .. '-' .. (tonumber(seq) + 1)
end

-- The oldest entry any group still needs: its oldest pending entry, else the one after
-- the last entry it was given.
local needed = nil
local present = {}
for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local info = {}
  for i = 1, #g, 2 do info[g[i]] = g[i + 1] end
  present[info['name']] = true
  local need
  if tonumber(info['pending']) > 0 then
    need = redis.call('XPENDING', KEYS[1], info['name'])[2]
  else
    need = next_id(info['last-delivered-id'])
  end
  if needed == nil or id_less(need, needed) then needed = need end
end

for i = 3, #ARGV do
  if not present[ARGV[i]] then needed = '0-1' end
end

local trimmed = 0
local excess = redis.call('XLEN', KEYS[1]) - keep
if excess > 0 then
  local upto = '+'
  if needed ~= nil then upto = '(' .. needed end
  local cut = redis.call('XRANGE', KEYS[1], '-', upto, 'COUNT', excess)
  if #cut > 0 then
    trimmed = redis.call('XTRIM', KEYS[1], 'MINID', '=', next_id(cut[#cut][1]))
  end
end

local dropped = 0
if cap > 0 and redis.call('XLEN', KEYS[1]) > cap then
  dropped = redis.call('XTRIM', KEYS[1], 'MAXLEN', '=', cap)
  redis.call('HINCRBY', KEYS[2], 'dropped', dropped)
end
return {trimmed, dropped}
