-- Move due entries from a waiting zset (delayed messages, or one group's retries) into
-- the stream that delivers them. Safe to run from any number of workers at once.
-- KEYS[1] zset, KEYS[2] target stream
-- ARGV[1] now ms, ARGV[2] most entries to move
-- Returns the due time (ms) of the next waiting entry, or -1 when none waits.
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, member in ipairs(due) do
  redis.call('XADD', KEYS[2], '*', unpack(unpack_fields(member)))
  redis.call('ZREM', KEYS[1], member)
end
local nxt = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if #nxt == 0 then return -1 end
return tonumber(nxt[2])
