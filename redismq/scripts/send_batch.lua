-- Send a batch of plain messages to the streams of one node, once: a call made again (redis-py
-- sends a command again on a new connection when the old one broke after the server ran it)
-- finds the batch's record and returns the entry ids the first call stored, storing nothing.
-- KEYS[1] the batch's record (named by its first message id), KEYS[2..] the streams (and
--   the id indexes of tasks' messages)
-- ARGV[1] how long the record is kept, ms; ARGV[2] how long each message's id index is kept,
--   ms (0: they have none); then per message: the position of its stream in KEYS, (with
--   ARGV[2] not 0: the position of its id index in KEYS, the index's value), its number of
--   field/value pairs N, the N pairs
-- Returns the entry ids, in the order of the messages.
local stored = redis.call('GET', KEYS[1])
if stored then
  local ids = {}
  for id in string.gmatch(stored, '[^,]+') do
    ids[#ids + 1] = id
  end
  return ids
end
local index_ms = ARGV[2]
local indexed = index_ms ~= '0'
local ids, i = {}, 3
while i <= #ARGV do
  local stream = tonumber(ARGV[i])
  if indexed then
    redis.call('SET', KEYS[tonumber(ARGV[i + 1])], ARGV[i + 2], 'PX', index_ms)
    i = i + 2
  end
  local pairs = tonumber(ARGV[i + 1])
  local last = i + 1 + 2 * pairs
  ids[#ids + 1] = redis.call('XADD', KEYS[stream], '*', unpack(ARGV, i + 2, last))
  i = last + 1
end
redis.call('SET', KEYS[1], table.concat(ids, ','), 'PX', ARGV[1])
return ids
