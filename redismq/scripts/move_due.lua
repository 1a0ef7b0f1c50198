-- Move due entries from a waiting zset (delayed messages, or one group's retries) into
-- the stream that delivers them. Safe to run from any number of workers at once. Due
-- times are on the server's clock.
-- KEYS[1] zset, KEYS[2] target stream
-- ARGV[1] move what is due by this time (ms; 0 or a past time: now), ARGV[2] most entries
-- Returns the ms until the next waiting entry is due (0: due already, by ARGV[1] if later
-- than now), or -1 when none waits.
local now = server_ms()
local due_by = math.max(now, tonumber(ARGV[1]))
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', due_by, 'LIMIT', 0, tonumber(ARGV[2]))
for _, member in ipairs(due) do
  redis.call('XADD', KEYS[2], '*', unpack(unpack_fields(member)))
  redis.call('ZREM', KEYS[1], member)
end
local nxt = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if #nxt == 0 then return -1 end
return math.max(0, tonumber(nxt[2]) - due_by)
