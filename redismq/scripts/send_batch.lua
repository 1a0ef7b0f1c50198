-- Send a batch of plain messages to the streams of one node, once: a call made again (redis-py
-- sends a command again on a new connection when the old one broke after the server ran it)
-- finds the batch's record and returns the entry ids the first call stored, storing nothing.
-- KEYS[1] the batch's record (named by its first message id), KEYS[2..] the streams
-- ARGV[1] how long the record is kept, ms; then per message: the position of its stream in
--   KEYS, its number of field/value pairs N, the N pairs
-- Returns the entry ids, in the order of the messages.
local stored = redis.call('GET', KEYS[1])
if stored then
  local ids = {}
  for id in string.gmatch(stored, '[^,]+') do
    ids[#ids + 1] = id
  end
  return ids
end
local ids, i = {}, 2
while i <= #ARGV do
  local stream, pairs = tonumber(ARGV[i]), tonumber(ARGV[i + 1])
  local last = i + 1 + 2 * pairs
  ids[#ids + 1] = redis.call('XADD', KEYS[stream], '*', unpack(ARGV, i + 2, last))
  i = last + 1
end
redis.call('SET', KEYS[1], table.concat(ids, ','), 'PX', ARGV[1])
return ids
