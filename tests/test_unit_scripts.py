"""The Lua scripts, run on fakeredis (with its Lua engine), one script at a time."""

from __future__ import annotations

from importlib import resources

import fakeredis
import pytest

from redismq.scripts import HELPERS, NAMES, Scripts, SyncScript, source

STREAM, DELAYED, DEDUP, COUNTERS, INDEX = "s", "d", "dd", "c", "ix"
SEND_KEYS = [STREAM, DELAYED, DEDUP, COUNTERS, INDEX]


@pytest.fixture
def r() -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis(server=fakeredis.FakeServer())


@pytest.fixture
def scripts(r: fakeredis.FakeRedis) -> Scripts:
    return Scripts(r)


def fields_args(fields: list[tuple[bytes, bytes]]) -> list[bytes]:
    return [x for pair in fields for x in pair]


def test_every_script_is_its_file_after_the_shared_helpers() -> None:
    folder = resources.files("redismq") / "scripts"
    for name in NAMES:
        own = (folder / f"{name}.lua").read_text()
        header = "".join(line for line in own.splitlines() if line.startswith("--"))
        assert "KEYS[1]" in header and "ARGV" in header, f"{name}.lua lists no KEYS/ARGV"
        helpers = [(folder / f"{h}.lua").read_text() for h in ("_pack", *HELPERS.get(name, ()))]
        assert source(name) == "\n".join([*helpers, own]), name


def test_shared_helpers_pack_and_unpack_any_bytes(r: fakeredis.FakeRedis) -> None:
    helpers = (resources.files("redismq") / "scripts" / "_pack.lua").read_text()
    values = [b"id", b"", b"3:a:b", b"\x00\xff", "é".encode()]
    script = helpers + "\nreturn unpack_fields(pack(ARGV, 1, #ARGV))"
    assert r.eval(script, 0, *values) == values


def test_unknown_script_attribute() -> None:
    with pytest.raises(AttributeError):
        Scripts(fakeredis.FakeRedis()).nonexistent  # noqa: B018


# -- send ------------------------------------------------------------------------------------


def test_send_plain_appends(r: fakeredis.FakeRedis, scripts: Scripts) -> None:
    reply = scripts.send(
        keys=SEND_KEYS, args=["m1", 0, 0, 0, 0, 0, "", 0, b"id", b"m1", b"body", b"{}"]
    )
    [(entry, fields)] = r.xrange(STREAM)
    assert reply == [b"m1", 1, entry]
    assert fields == {b"id": b"m1", b"body": b"{}"}
    assert not r.exists(DEDUP)
    assert not r.exists(INDEX)


def test_send_writes_the_id_index_with_the_entry(r: fakeredis.FakeRedis, scripts: Scripts) -> None:
    args = ["m1", 0, 0, 0, 0, 60_000, "t:0:g:task", 0, b"id", b"m1"]
    assert scripts.send(keys=SEND_KEYS, args=args)[:2] == [b"m1", 1]
    assert r.get(INDEX) == b"t:0:g:task"
    assert 0 < r.pttl(INDEX) <= 60_000
    assert r.xlen(STREAM) == 1
    assert r.zcard(DELAYED) == 0


def test_a_first_attempt_writes_its_id_record_and_a_retry_finds_it(
    r: fakeredis.FakeRedis, scripts: Scripts
) -> None:
    def attempt(check: int) -> list:
        return scripts.send(
            keys=SEND_KEYS, args=["m1", 15_000, check, 0, 0, 0, "", 0, b"id", b"m1"]
        )

    r.set(DEDUP, "stale")  # a first attempt's fresh id has no record: it does not look
    assert attempt(0)[:2] == [b"m1", 1]
    assert r.get(DEDUP) == b"m1"
    assert attempt(1) == [b"m1", 0]  # the retry of an attempt that landed stores nothing
    assert r.xlen(STREAM) == 1


def test_send_dedup_returns_the_first_id(r: fakeredis.FakeRedis, scripts: Scripts) -> None:
    first = scripts.send(
        keys=SEND_KEYS, args=["m1", 60_000, 1, 0, 0, 0, "", 0, b"id", b"m1", b"body", b"1"]
    )
    second = scripts.send(
        keys=SEND_KEYS, args=["m2", 60_000, 1, 0, 0, 0, "", 0, b"id", b"m2", b"body", b"2"]
    )
    third = scripts.send(
        keys=SEND_KEYS, args=["m3", 60_000, 1, 0, 0, 0, "", 0, b"id", b"m3", b"body", b"3"]
    )
    assert first[:2] == [b"m1", 1]
    assert second == [b"m1", 0]
    assert third == [b"m1", 0]
    assert r.xlen(STREAM) == 1
    assert r.hget(COUNTERS, "deduplicated") == b"2"
    assert r.get(DEDUP) == b"m1"
    assert 0 < r.pttl(DEDUP) <= 60_000


def test_send_dedup_window_expires(r: fakeredis.FakeRedis, scripts: Scripts) -> None:
    scripts.send(
        keys=SEND_KEYS, args=["m1", 60_000, 1, 0, 0, 0, "", 0, b"id", b"m1", b"body", b"1"]
    )
    r.delete(DEDUP)  # what expiry does when the window has passed
    assert scripts.send(keys=SEND_KEYS, args=["m2", 60_000, 1, 0, 0, 0, "", 0, b"id", b"m2"])[
        :2
    ] == [
        b"m2",
        1,
    ]
    assert r.xlen(STREAM) == 2


def test_send_other_dedup_key_is_sent(r: fakeredis.FakeRedis, scripts: Scripts) -> None:
    scripts.send(keys=SEND_KEYS, args=["m1", 1000, 1, 0, 0, 0, "", 0, b"id", b"m1"])
    other = [STREAM, DELAYED, "dd2", COUNTERS, INDEX]
    assert scripts.send(keys=other, args=["m2", 1000, 1, 0, 0, 0, "", 0, b"id", b"m2"])[:2] == [
        b"m2",
        1,
    ]
    assert r.xlen(STREAM) == 2


def test_send_delayed_waits_in_the_zset(r: fakeredis.FakeRedis, scripts: Scripts) -> None:
    before = server_ms(r)
    reply = scripts.send(
        keys=SEND_KEYS, args=["m1", 0, 0, 5000, 0, 0, "", 0, b"id", b"m1", b"body", b"{}"]
    )
    assert reply == [b"m1", 1]
    assert r.xlen(STREAM) == 0
    [(member, score)] = r.zrange(DELAYED, 0, -1, withscores=True)
    assert before + 5000 <= score <= server_ms(r) + 5000  # due on the server's clock
    assert member == b"2:id2:m14:body2:{}"


def test_send_delayed_with_dedup(r: fakeredis.FakeRedis, scripts: Scripts) -> None:
    scripts.send(keys=SEND_KEYS, args=["m1", 1000, 1, 5000, 0, 0, "", 0, b"id", b"m1"])
    assert scripts.send(keys=SEND_KEYS, args=["m2", 1000, 1, 6000, 0, 0, "", 0, b"id", b"m2"]) == [
        b"m1",
        0,
    ]
    assert r.zcard(DELAYED) == 1


# -- send_batch ------------------------------------------------------------------------------


def test_send_batch_stores_each_message_once_and_a_second_run_returns_the_first_ids(
    r: fakeredis.FakeRedis, scripts: Scripts
) -> None:
    keys = ["rec", "s1", "s2"]
    # no id indexes; per message: its stream's position in KEYS, its pairs, the pairs
    args = [5_000, 0, 2, 1, b"id", b"m1", 3, 2, b"id", b"m2", b"h", b"x", 2, 1, b"id", b"m3"]
    first = scripts.send_batch(keys=keys, args=args)
    s1, s2 = ([e for e, _ in r.xrange(s)] for s in ("s1", "s2"))
    assert first == [s1[0], s2[0], s1[1]]  # in the order of the messages
    assert [f for _, f in r.xrange("s2")] == [{b"id": b"m2", b"h": b"x"}]
    assert scripts.send_batch(keys=keys, args=args) == first  # made again: nothing stored
    assert (r.xlen("s1"), r.xlen("s2")) == (2, 1)
    assert 0 < r.pttl("rec") <= 5_000


def test_send_batch_writes_each_task_s_id_index_with_its_entry_once(
    r: fakeredis.FakeRedis, scripts: Scripts
) -> None:
    keys = ["rec", "s1", "ix1", "ix2"]
    # per message: its stream's position, its index's position and value, its pairs, the pairs
    args = [5_000, 60_000, 2, 3, "where1", 1, b"id", b"m1", 2, 4, "where2", 1, b"id", b"m2"]
    first = scripts.send_batch(keys=keys, args=args)
    assert first == [e for e, _ in r.xrange("s1")]
    assert [f for _, f in r.xrange("s1")] == [{b"id": b"m1"}, {b"id": b"m2"}]
    assert (r.get("ix1"), r.get("ix2")) == (b"where1", b"where2")
    assert 55_000 < r.pttl("ix1") <= 60_000
    r.delete("ix1")
    assert scripts.send_batch(keys=keys, args=args) == first  # made again: nothing stored
    assert r.xlen("s1") == 2 and not r.exists("ix1")


# -- move_due --------------------------------------------------------------------------------


def schedule(scripts: Scripts, mid: str, delay: int, body: bytes = b"{}") -> None:
    scripts.send(
        keys=SEND_KEYS, args=[mid, 0, 0, delay, 0, 0, "", 0, b"id", mid.encode(), b"body", body]
    )


def server_ms(r: fakeredis.FakeRedis) -> int:
    seconds, micros = r.time()
    return seconds * 1000 + micros // 1000


def read_by_c1(r: fakeredis.FakeRedis, *message_ids: str) -> list[str]:
    """Entries of STREAM, one per message id, read by consumer c1 of group g: their ids."""
    entries = [r.xadd(STREAM, {"id": m}).decode() for m in message_ids]
    r.xgroup_create(STREAM, "g", id="0")
    r.xreadgroup("g", "c1", {STREAM: ">"})
    return entries


def test_move_due_moves_only_due_entries(r: fakeredis.FakeRedis, scripts: Scripts) -> None:
    for mid, delay in [("a", 10_000), ("b", 20_000), ("c", 30_000), ("d", 40_000)]:
        schedule(scripts, mid, delay)
    wait = scripts.move_due(keys=[DELAYED, STREAM], args=[server_ms(r) + 25_000, 500])
    assert 0 < wait <= 5_000  # until c is due (after the time asked for)
    assert [f[b"id"] for _, f in r.xrange(STREAM)] == [b"a", b"b"]
    assert r.zcard(DELAYED) == 2


def test_move_due_none_due(r: fakeredis.FakeRedis, scripts: Scripts) -> None:
    schedule(scripts, "a", 9000)
    assert 8000 < scripts.move_due(keys=[DELAYED, STREAM], args=[0, 500]) <= 9000
    assert r.xlen(STREAM) == 0


def test_move_due_goes_by_the_server_clock_not_the_callers(
    r: fakeredis.FakeRedis, scripts: Scripts
) -> None:
    schedule(scripts, "a", 0)
    schedule(scripts, "b", 60_000)
    # A caller whose clock is behind still moves what is due by the server's clock.
    scripts.move_due(keys=[DELAYED, STREAM], args=[server_ms(r) - 10**9, 500])
    assert [f[b"id"] for _, f in r.xrange(STREAM)] == [b"a"]


def test_move_due_empty_returns_minus_one(r: fakeredis.FakeRedis, scripts: Scripts) -> None:
    assert scripts.move_due(keys=[DELAYED, STREAM], args=[10**13, 500]) == -1
    schedule(scripts, "a", 1)
    assert scripts.move_due(keys=[DELAYED, STREAM], args=[10**13, 500]) == -1
    assert r.xlen(STREAM) == 1
    assert not r.exists(DELAYED)


def test_move_due_batch_limit(r: fakeredis.FakeRedis, scripts: Scripts) -> None:
    for i in range(5):
        schedule(scripts, f"m{i}", 1000 + i)
    # Two moved; the next one is already due, which tells the caller to run again at once.
    until = server_ms(r) + 5000
    assert scripts.move_due(keys=[DELAYED, STREAM], args=[until, 2]) == 0
    assert r.xlen(STREAM) == 2
    assert scripts.move_due(keys=[DELAYED, STREAM], args=[until, 10]) == -1
    assert [f[b"id"] for _, f in r.xrange(STREAM)] == [f"m{i}".encode() for i in range(5)]


def test_move_due_twice_moves_once(r: fakeredis.FakeRedis, scripts: Scripts) -> None:
    schedule(scripts, "a", 1)
    until = server_ms(r) + 1000
    scripts.move_due(keys=[DELAYED, STREAM], args=[until, 500])
    scripts.move_due(keys=[DELAYED, STREAM], args=[until, 500])
    assert r.xlen(STREAM) == 1


@pytest.mark.parametrize(
    "value",
    [
        b"",
        b":",
        b"12:34",
        b"3:abc",
        b"\x00\x01\xff\xfe",
        "Zoë — 名前".encode(),
        b'{"a":"b:c"}',
        bytes(range(256)),
        b"x" * 10_000,
    ],
)
def test_packing_is_binary_safe(r: fakeredis.FakeRedis, scripts: Scripts, value: bytes) -> None:
    fields = [(b"id", b"m"), (b"body", value), (b"k:e:y", value), (b"created", b"17")]
    scripts.send(keys=SEND_KEYS, args=["m", 0, 0, 1, 0, 0, "", 0, *fields_args(fields)])
    scripts.move_due(keys=[DELAYED, STREAM], args=[10**13, 500])
    [(_, got)] = r.xrange(STREAM)
    assert got == dict(fields)


# -- create_topic ----------------------------------------------------------------------------


def test_create_topic_is_idempotent(r: fakeredis.FakeRedis, scripts: Scripts) -> None:
    keys = ["topics", "routes", "version"]
    first = scripts.create_topic(keys=keys, args=["t", '{"queues":2}', "b1", "b2"])
    assert first == b'{"queues":2}'
    assert r.hgetall("routes") == {b"t#0": b"b1", b"t#1": b"b2"}
    assert r.get("version") == b"1"
    again = scripts.create_topic(keys=keys, args=["t", '{"queues":5}', "x", "y"])
    assert again == b'{"queues":2}'
    assert r.hgetall("routes") == {b"t#0": b"b1", b"t#1": b"b2"}
    assert r.get("version") == b"1"


# -- settle ----------------------------------------------------------------------------------


def test_settle_acks_and_records_done(r: fakeredis.FakeRedis, scripts: Scripts) -> None:
    e1, e2 = read_by_c1(r, "m1", "m2")
    keys = [STREAM, "rs", "done", "stats", "cancelled", "waiting", "outcome:m2", "job:m2"]
    outcome = '{"status":"done","result":{"ok":true}}'
    args = ["g", "c1", 60_000, 60_000, "", "m1", e1, 0, "", "m2", e2, 0, outcome]
    assert scripts.settle(keys=keys, args=args) == [2, 0, 0, []]
    assert r.xpending(STREAM, "g")["pending"] == 0
    assert abs(r.zscore("done", "m1") - server_ms(r)) < 5_000  # the server's clock
    assert r.hgetall("stats") == {b"done": b"2"}
    assert r.lrange("outcome:m2", 0, -1) == [outcome.encode()]
    assert r.pttl("outcome:m2") > 0
    assert not r.exists("outcome:m1")
    # Settling again touches nothing: the entries are no longer pending (positions 1, 2).
    assert scripts.settle(keys=keys, args=args) == [0, 0, 0, [1, 2]]
    assert r.hget("stats", "duplicates") is None
    assert r.llen("outcome:m2") == 1


def test_settle_counts_a_completed_message_delivered_again_as_duplicate(
    r: fakeredis.FakeRedis, scripts: Scripts
) -> None:
    [e] = read_by_c1(r, "m1")
    r.zadd("done", {"m1": 900})
    keys = [STREAM, "rs", "done", "stats", "cancelled", "waiting"]
    args = ["g", "c1", 60_000, 0, "", "m1", e, 0, ""]
    assert scripts.settle(keys=keys, args=args) == [0, 1, 0, []]
    assert r.xpending(STREAM, "g")["pending"] == 0


def test_settle_leaves_an_entry_another_consumer_owns(
    r: fakeredis.FakeRedis, scripts: Scripts
) -> None:
    e1, e2 = read_by_c1(r, "m1", "m2")
    r.xclaim(STREAM, "g", "c2", 0, [e2])
    keys = [STREAM, "rs", "done", "stats", "cancelled", "waiting", "outcome:m2", "job:m2"]
    args = ["g", "c1", 60_000, 0, "", "m1", e1, 0, "", "m2", e2, 0, '{"status":"done"}']
    assert scripts.settle(keys=keys, args=args) == [1, 0, 0, [2]]
    assert [p["consumer"] for p in r.xpending_range(STREAM, "g", "-", "+", 10)] == [b"c2"]
    assert r.zscore("done", "m2") is None
    assert not r.exists("outcome:m2")


def test_settle_searches_the_pending_list_only_when_the_count_of_takeovers_moved(
    r: fakeredis.FakeRedis, scripts: Scripts
) -> None:
    e1, e2 = read_by_c1(r, "m1", "m2")
    r.set("takeovers", 4)
    r.xclaim(STREAM, "g", "c2", 0, [e2])  # a takeover that was not counted, to tell the paths
    keys = [STREAM, "rs", "done", "stats", "cancelled", "waiting", "takeovers", "running"]
    # Read with a count of 3: it moved since, so the settle looks and leaves c2's entry.
    moved = ["g", "c1", 60_000, 0, "3", "m1", e1, 0, "", "m2", e2, 0, ""]
    assert scripts.settle(keys=keys, args=moved) == [1, 0, 0, [2]]
    assert [p["consumer"] for p in r.xpending_range(STREAM, "g", "-", "+", 10)] == [b"c2"]
    # The same count as at the read: the entries are taken as its own, unsearched.
    same = ["g", "c1", 60_000, 0, "4", "m2", e2, 0, ""]
    assert scripts.settle(keys=keys, args=same) == [1, 0, 0, []]
    assert r.xpending(STREAM, "g")["pending"] == 0


def test_settle_reads_a_count_of_takeovers_never_made_as_zero(
    r: fakeredis.FakeRedis, scripts: Scripts
) -> None:
    [e] = read_by_c1(r, "m1")
    r.xclaim(STREAM, "g", "c2", 0, [e])  # not counted: only the count tells the paths apart
    keys = [STREAM, "rs", "done", "stats", "cancelled", "waiting", "takeovers", "running"]
    assert scripts.settle(keys=keys, args=["g", "c1", 60_000, 0, "0", "m1", e, 0, ""]) == [
        1,
        0,
        0,
        [],
    ]


def test_settle_from_retry_stream_deletes(r: fakeredis.FakeRedis, scripts: Scripts) -> None:
    e = r.xadd("rs", {"id": "m1"}).decode()
    r.xgroup_create("rs", "g", id="0")
    r.xreadgroup("g", "c1", {"rs": ">"})
    assert scripts.settle(
        keys=[STREAM, "rs", "done", "stats", "cancelled", "waiting"],
        args=["g", "c1", 60_000, 0, "", "m1", e, 1, ""],
    ) == [1, 0, 0, []]
    assert r.xlen("rs") == 0
    assert r.xpending("rs", "g")["pending"] == 0


def test_settle_forgets_old_done_records(r: fakeredis.FakeRedis, scripts: Scripts) -> None:
    now = server_ms(r)
    r.zadd("done", {"old": now - 2_000, "recent": now - 500})
    scripts.settle(
        keys=[STREAM, "rs", "done", "stats", "cancelled", "waiting"], args=["g", "c1", 1000, 0, ""]
    )
    assert r.zrange("done", 0, -1) == [b"recent"]


def test_settle_of_a_cancelled_job_records_done_without_a_result(
    r: fakeredis.FakeRedis, scripts: Scripts
) -> None:
    [e] = read_by_c1(r, "m1")
    r.zadd("cancelled", {"m1": 2**50, "expired": 1})
    keys = [STREAM, "rs", "done", "stats", "cancelled", "waiting"]
    args = ["g", "c1", 60_000, 0, "", "m1", e, 0, "~"]
    assert scripts.settle(keys=keys, args=args) == [0, 0, 1, []]
    assert r.xpending(STREAM, "g")["pending"] == 0
    assert r.zscore("done", "m1") is not None
    # The mark stays for the other groups until it expires; expired marks are pruned.
    assert r.zrange("cancelled", 0, -1) == [b"m1"]
    assert r.hgetall("stats") == {b"cancelled": b"1"}


def test_a_batch_with_a_script_the_server_lost_runs_each_call_once(
    r: fakeredis.FakeRedis, scripts: Scripts
) -> None:
    r.xgroup_create("s", "g", id="0", mkstream=True)
    r.xadd("s", {"id": "m1"}, id="1-0")
    r.xreadgroup("g", "c1", {"s": ">"})
    args = ["g", "c1", 10**6, 10**6, ""]
    scripts.settle(keys=["s", "rs", "done", "stats", "x", "w"], args=args)
    # settle is loaded now, step is not: the batch fails for step only
    settle = ("settle", ["s", "rs", "done", "stats", "x", "w"], [*args, "m1", "1-0", 0, ""])
    replies = scripts.run([settle, ("step", ["h"], ["finish", 1000])])
    assert replies == [[1, 0, 0, []], 1]
    assert r.hgetall("stats") == {b"done": b"1"}  # settled once, not once more as a duplicate


def test_settle_finds_its_entries_among_many_it_holds(
    r: fakeredis.FakeRedis, scripts: Scripts
) -> None:
    ids = [r.xadd(STREAM, {"id": f"m{i}"}).decode() for i in range(150)]
    r.xgroup_create(STREAM, "g", id="0")
    r.xreadgroup("g", "c1", {STREAM: ">"})
    r.xclaim(STREAM, "g", "c2", 0, [ids[75]])
    keys = [STREAM, "rs", "done", "stats", "cancelled", "waiting", "running"]
    args = ["g", "c1", 60_000, 0, ""]
    for i in (0, 75, 149):  # the first and last of 149 held entries (pages of 67), and c2's
        args += [f"m{i}", ids[i], 0, ""]
    assert scripts.settle(keys=keys, args=args) == [2, 0, 0, [2]]
    assert r.xpending(STREAM, "g")["pending"] == 148


def test_a_script_call_takes_none_for_no_keys_or_arguments_as_redis_pys_does(
    r: fakeredis.FakeRedis,
) -> None:
    script = SyncScript(r, "return #KEYS + #ARGV")
    assert script(keys=None, args=None) == 0
    assert script(keys=["k"], args=[1, 2]) == 3


class _Breaks:
    """A connection whose replies come as given, an exception raised in its turn; counts
    what was sent and each disconnect."""

    def __init__(self, replies: list[object], connecting: BaseException | None = None) -> None:
        from redismq.urls import connection_options

        self.replies, self.sent, self.disconnects = list(replies), 0, 0
        self.retry = connection_options(1.0)["retry"]
        self.is_connected = connecting is None
        self.connecting = connecting  # what connect() raises (after its socket opened)
        self.health_check_interval = 0  # no health check

    def connect(self) -> None:
        self.is_connected = True
        if self.connecting is not None:
            raise self.connecting

    def pack_commands(self, commands: object) -> object:
        return commands

    def send_packed_command(self, packed: object, check_health: bool = True) -> None:
        self.sent += 1

    def read_response(self) -> object:
        reply = self.replies.pop(0)
        if isinstance(reply, BaseException):
            raise reply
        return reply

    def disconnect(self) -> None:
        self.disconnects += 1


def test_a_round_trip_broken_after_a_reply_is_not_sent_again() -> None:
    """A second blocking read would not deliver the entry the first one did: what came is
    returned, the error in place of the rest, and the connection is closed."""
    import redis

    from redismq.scripts import round_trip

    broken = redis.ConnectionError("reset")
    conn = _Breaks([b"first", broken, b"never read"])
    replies = round_trip(conn, [("A",), ("B",), ("C",)])  # type: ignore[arg-type]
    assert replies == [b"first", broken, broken]
    assert conn.sent == 1 and conn.disconnects == 1
    # broken before any reply: sent again, as a pipeline would be
    conn = _Breaks([broken, b"a", b"b"])
    assert round_trip(conn, [("A",), ("B",)]) == [b"a", b"b"]  # type: ignore[arg-type]
    assert conn.sent == 2
    # an error reply keeps its place and closes nothing
    refused = redis.ResponseError("refused")
    conn = _Breaks([refused, b"b"])
    assert round_trip(conn, [("A",), ("B",)]) == [refused, b"b"]  # type: ignore[arg-type]
    assert conn.disconnects == 0


def test_a_connection_whose_handshake_was_interrupted_is_closed() -> None:
    """connect() opens the socket, then asks HELLO (and Sentinel's connection keeps its
    socket after an error): a KeyboardInterrupt in between left it open with the
    handshake's reply unread, and the next round trip read that reply as its own."""
    from redismq.scripts import round_trip

    conn = _Breaks([b"never read"], connecting=KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        round_trip(conn, [("ECHO", "b")])  # type: ignore[arg-type]
    assert conn.disconnects == 1 and conn.sent == 0
