-- Hand a fetched but unstarted message back to its group at once (graceful shutdown):
-- acknowledge it where it was and append it to the group's retry stream.
-- KEYS[1] source stream, KEYS[2] group's retry stream
-- ARGV[1] group, ARGV[2] entry id, ARGV[3] source is the retry stream (0/1),
-- ARGV[4..] the entry's field/value pairs
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
if ARGV[3] == '1' then redis.call('XDEL', KEYS[1], ARGV[2]) end
redis.call('XADD', KEYS[2], '*', unpack(ARGV, 4))
return 1
