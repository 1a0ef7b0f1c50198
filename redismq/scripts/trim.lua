-- Trim a queue's stream without removing any entry that some group still needs.
-- Keeps at most ARGV[1] entries that every group has acknowledged (so that a group created
-- later still finds recent history); with a hard cap ARGV[2] > 0, also drops the oldest
-- needed entries beyond it and counts them as dropped (entries every group had
-- acknowledged count as trimmed).
-- A group registered for the topic (ARGV[3..]) that has no group on this stream yet (its
-- workers never ran, or the queue was added later) will start at the oldest entry: while
-- one is missing, nothing is trimmed but what the hard cap drops.
-- KEYS[1] stream, KEYS[2] queue counters hash
-- ARGV[1] entries to keep, ARGV[2] hard cap (0: none), ARGV[3..] registered group names
-- Returns {trimmed, dropped}
local keep, cap = tonumber(ARGV[1]), tonumber(ARGV[2])
if redis.call('EXISTS', KEYS[1]) == 0 then return {0, 0} end

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

-- The hard cap removes the oldest entries beyond it; of those, the ones every group had
-- acknowledged (older than the oldest needed entry) count as trimmed, the rest as dropped.
local dropped = 0
local over = 0
if cap > 0 then over = redis.call('XLEN', KEYS[1]) - cap end
if over > 0 then
  local acked = over
  if needed ~= nil then acked = #redis.call('XRANGE', KEYS[1], '-', '(' .. needed, 'COUNT', over) end
  local removed = redis.call('XTRIM', KEYS[1], 'MAXLEN', '=', cap)
  trimmed = trimmed + math.min(acked, removed)
  dropped = removed - math.min(acked, removed)
  if dropped > 0 then redis.call('HINCRBY', KEYS[2], 'dropped', dropped) end
end
return {trimmed, dropped}
