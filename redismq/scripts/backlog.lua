-- The backlog of one queue and of each given group (the definition in _backlog.lua), read
-- only: what the `send` script compares with a bounded queue's room.
-- KEYS[1] stream, KEYS[2] delayed zset, KEYS[3..] per group: its retry stream, its retry zset
-- ARGV[1..] the group names
-- Returns {queue backlog, backlog of each group in ARGV order}
local groups = {}
for i = 1, #ARGV do
  groups[i] = {ARGV[i], KEYS[1 + 2 * i], KEYS[2 + 2 * i]}
end
local total, each = queue_backlog(KEYS[1], KEYS[2], groups)
local out = {total}
for _, n in ipairs(each) do out[#out + 1] = n end
return out
