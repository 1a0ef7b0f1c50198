-- Delete one group's state on one queue: its group on the stream and its side keys.
-- KEYS[1] stream, KEYS[2] retry zset, KEYS[3] retry stream, KEYS[4] dead-letter stream,
-- KEYS[5] done zset, KEYS[6] stats hash, KEYS[7] ordered-group lease, KEYS[8] the group's
-- turn over the streams read from this queue's stream on (see read.lua), KEYS[9] its count
-- of takeovers
-- ARGV[1] group
-- Returns 1 if the stream had the group, else 0.
local had = 0
if redis.call('EXISTS', KEYS[1]) == 1 then
  local ok, n = pcall(redis.call, 'XGROUP', 'DESTROY', KEYS[1], ARGV[1])
  if ok then had = n end
end
redis.call('DEL', KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9])
return had
