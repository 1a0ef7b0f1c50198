-- Put dead letters back for their group (only) with a fresh attempt count; a task's job
-- dead-lettered by its own group (dead_job, see dead.lua) reads queued again (its dead
-- status, the attempt a cancel kept and its outcome go; its last error stays). Another
-- group's leave the job alone.
-- KEYS[1] dead-letter stream, KEYS[2] group's retry stream, KEYS[3] stats hash,
-- then for the i-th entry id, KEYS[2 + 2i] its job hash and KEYS[3 + 2i] its outcome list
-- (named by the message id the caller read in it)
-- ARGV the entry ids to replay (those no longer there are skipped)
-- Returns the number replayed.
local replayed = 0
for i = 1, #ARGV do
  local e = redis.call('XRANGE', KEYS[1], ARGV[i], ARGV[i])
  if #e > 0 then
    local out, f, tracked = {}, e[1][2], false
    for j = 1, #f, 2 do
      local name = f[j]
      if name == 'dead_job' then tracked = true end
      if string.sub(name, 1, 5) ~= 'dead_' and name ~= 'attempt' then
        out[#out + 1] = name
        out[#out + 1] = f[j + 1]
      end
    end
    redis.call('XADD', KEYS[2], '*', unpack(out))
    redis.call('XDEL', KEYS[1], ARGV[i])
    if tracked then
      redis.call('HDEL', KEYS[2 + 2 * i], 'status', 'attempt')
      redis.call('DEL', KEYS[3 + 2 * i])
    end
    replayed = replayed + 1
  end
end
if replayed > 0 then redis.call('HINCRBY', KEYS[3], 'dead', -replayed) end
return replayed
