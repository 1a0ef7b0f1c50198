"""Whole send → consume → settle cycles with `Client` running on fakeredis (no server)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import timedelta
from unittest import mock

import fakeredis
import pytest
import redis

from redismq import AsyncClient, Client, InvalidMessage, InvalidURL, TopicExists, TopicNotFound
from redismq.client import redis_errors
from redismq.errors import BrokerUnavailable
from redismq.keys import QueueKeys
from redismq.message import now_ms


@pytest.fixture
def fake_server() -> fakeredis.FakeServer:
    return fakeredis.FakeServer()


@pytest.fixture
def fake(fake_server: fakeredis.FakeServer) -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis(server=fake_server)


@pytest.fixture
def fclient(fake: fakeredis.FakeRedis) -> Iterator[Client]:
    yield Client("redis://:pw@fake:1/0", connection=fake)


def keys(topic: str, q: int = 0) -> QueueKeys:
    return QueueKeys("rmq", topic, q)


def receive(consumer, count: int = 100) -> list:
    """One non-blocking receive that also looks for due delayed messages and retries."""
    consumer._next_move = 0.0
    return consumer.receive(count, block=None)


# -- client basics ---------------------------------------------------------------------------


def test_bad_url_fails_before_connecting() -> None:
    with (
        mock.patch("redismq.client.connect") as connect,
        pytest.raises(InvalidURL, match="unsupported URL scheme"),
    ):
        Client("http://localhost/0")
    connect.assert_not_called()


def test_url_from_environment(fake: fakeredis.FakeRedis, monkeypatch) -> None:
    monkeypatch.setenv("REDISMQ_URL", "redis://envhost:1/0")
    monkeypatch.setenv("REDISMQ_NAMESPACE", "other")
    with mock.patch("redismq.client.connect", return_value=fake) as connect:
        c = Client()
    connect.assert_called_once_with("redis://envhost:1/0")
    assert c.namespace == "other"


def test_a_client_uses_the_connection_handed_in(fake: fakeredis.FakeRedis) -> None:
    client = Client("redis://nowhere.invalid:1/0", connection=fake)
    mid = client.send("handed", {"n": 1})
    assert client.meta is fake
    assert fake.xrange(keys("handed").stream)[0][1][b"id"] == mid.encode()


def test_an_async_client_uses_the_connection_handed_in(fake_server) -> None:
    async def send() -> str:
        conn = fakeredis.FakeAsyncRedis(server=fake_server)
        async with AsyncClient("redis://nowhere.invalid:1/0", connection=conn) as client:
            return await client.send("handed", {"n": 1})

    mid = asyncio.run(send())
    stored = fakeredis.FakeRedis(server=fake_server).xrange(keys("handed").stream)
    assert stored[0][1][b"id"] == mid.encode()


def test_repr_masks_password(fclient: Client) -> None:
    assert "pw" not in repr(fclient)
    assert ":***@fake" in repr(fclient)


def test_ping_raises_one_line_when_the_server_is_gone(
    fclient: Client, fake_server: fakeredis.FakeServer
) -> None:
    fclient.ping()
    fake_server.connected = False
    with pytest.raises(BrokerUnavailable, match="cannot reach Redis at"):
        fclient.ping()


def test_redis_errors_become_one_line() -> None:
    url = "redis://:hunter2@host:1/0"
    with (
        pytest.raises(BrokerUnavailable, match="cannot reach Redis at") as info,
        redis_errors(url),
    ):
        raise redis.ConnectionError("connection refused")
    assert "hunter2" not in str(info.value)
    with pytest.raises(BrokerUnavailable, match="refused the password"), redis_errors(url):
        raise redis.AuthenticationError("WRONGPASS")
    with pytest.raises(BrokerUnavailable, match="permission denied"), redis_errors(url):
        raise redis.ResponseError("NOPERM no permissions")
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"), redis_errors(url):
        raise redis.ResponseError("WRONGTYPE")


# -- topics ----------------------------------------------------------------------------------


def test_create_topic_idempotent_and_shape_checked(fclient: Client) -> None:
    t = fclient.create_topic("orders", 3)
    assert (t.name, t.queues, t.placement) == ("orders", 3, ["default"] * 3)
    assert fclient.create_topic("orders", 3).queues == 3
    with pytest.raises(TopicExists, match="exists with 3 queues, not 5"):
        fclient.create_topic("orders", 5)
    assert fclient.topics() == ["orders"]


@pytest.mark.parametrize("queues", [0, -1, 1025, 2.0, "4", None])
def test_create_topic_bad_queue_count(fclient: Client, queues: object) -> None:
    with pytest.raises(InvalidMessage, match="queues must be a whole number"):
        fclient.create_topic("t", queues)  # type: ignore[arg-type]


def test_create_topic_bad_name(fclient: Client) -> None:
    with pytest.raises(InvalidMessage, match="must not contain"):
        fclient.create_topic("a:b")


def test_topic_auto_created_on_send(fclient: Client) -> None:
    fclient.send("fresh", 1)
    assert fclient.topic("fresh").queues == fclient.default_queues


def test_missing_topic(fclient: Client) -> None:
    with pytest.raises(TopicNotFound, match="redismq topic create nope"):
        fclient.topic("nope", create=False)
    with pytest.raises(TopicNotFound):
        fclient.consumer("nope", "g")


# -- sending ---------------------------------------------------------------------------------


def test_send_with_key_uses_the_stable_queue(fclient: Client, fake: fakeredis.FakeRedis) -> None:
    fclient.create_topic("k", 8)
    sent = [fclient.send_message("k", {"n": i}, key="user-1") for i in range(3)]
    assert {s.queue for s in sent} == {4}  # crc32("user-1") % 8
    assert fake.xlen(keys("k", 4).stream) == 3


def test_send_without_key_round_robin(fclient: Client, fake: fakeredis.FakeRedis) -> None:
    fclient.create_topic("rr", 4)
    queues = [fclient.send_message("rr", i).queue for i in range(8)]
    assert sorted(queues) == [0, 0, 1, 1, 2, 2, 3, 3]


def test_send_dedup(fclient: Client, fake: fakeredis.FakeRedis) -> None:
    fclient.create_topic("d", 4)
    first = fclient.send("d", {"n": 1}, dedup_key="signup-42")
    second = fclient.send("d", {"n": 2}, dedup_key="signup-42")
    assert first == second
    total = sum(fake.xlen(keys("d", q).stream) for q in range(4))
    assert total == 1


def test_send_rejects_bad_input_before_sending(fclient: Client, fake: fakeredis.FakeRedis) -> None:
    fclient.create_topic("b", 1)
    with pytest.raises(InvalidMessage, match="not JSON-serialisable"):
        fclient.send("b", {1, 2})
    with pytest.raises(InvalidMessage, match="must not be negative"):
        fclient.send("b", 1, delay=-1)
    with pytest.raises(InvalidMessage, match="headers must be a dict"):
        fclient.send("b", 1, headers={1: "x"})  # type: ignore[dict-item]
    assert fake.xlen(keys("b").stream) == 0


def test_send_over_max_body(fake: fakeredis.FakeRedis) -> None:
    c = Client("redis://fake:1/0", max_body=10, connection=fake)
    with pytest.raises(InvalidMessage, match="over the limit of 10 bytes"):
        c.send("t", "x" * 20)


def test_send_headers_with_unserialisable_value(fclient: Client) -> None:
    with pytest.raises(InvalidMessage):
        fclient.send("h", 1, headers={"trace": object()})  # type: ignore[dict-item]


def test_send_key_not_encodable(fclient: Client) -> None:
    with pytest.raises(InvalidMessage):
        fclient.send("h", 1, key="\ud800")


def test_send_infinite_delay(fclient: Client) -> None:
    with pytest.raises(InvalidMessage):
        fclient.send("h", 1, delay=float("inf"))


def test_send_many(fclient: Client, fake: fakeredis.FakeRedis) -> None:
    fclient.create_topic("many", 3)
    ids = fclient.send_many("many", [{"n": i} for i in range(9)], headers={"h": "v"})
    assert len(set(ids)) == 9
    assert [fake.xlen(keys("many", q).stream) for q in range(3)] == [3, 3, 3]
    con = fclient.consumer("many", "g")
    got = receive(con)
    assert sorted(m.body["n"] for m in got) == list(range(9))
    assert {m.id for m in got} == set(ids)
    assert all(m.headers == {"h": "v"} for m in got)


# -- consuming -------------------------------------------------------------------------------


def test_send_consume_ack(fclient: Client, fake: fakeredis.FakeRedis) -> None:
    fclient.create_topic("email", 2)
    con = fclient.consumer("email", "senders")
    mid = fclient.send("email", {"to": "zoe@example.com"}, key="zoe", headers={"t": "1"})
    [msg] = receive(con)
    assert (msg.id, msg.body, msg.key, msg.headers) == (
        mid,
        {"to": "zoe@example.com"},
        "zoe",
        {"t": "1"},
    )
    assert (msg.topic, msg.group, msg.attempt, msg.from_retry) == ("email", "senders", 0, False)
    assert abs(msg.created - now_ms()) < 60_000
    assert con.backlog() == 1  # pending
    con.ack(msg)
    assert con.backlog() == 0
    k = keys("email", msg.queue)
    assert fake.zscore(k.done("senders"), mid) is not None
    assert fake.hget(k.stats("senders"), "done") == b"1"
    assert receive(con) == []


def test_ack_stores_result(fclient: Client, fake: fakeredis.FakeRedis) -> None:
    con = fclient.consumer("jobs", "g", create=True)
    fclient.send("jobs", 1)
    [msg] = receive(con)
    con.ack(msg, {"answer": 42})
    k = keys("jobs", msg.queue)
    assert fake.lrange(k.outcome(msg.id), 0, -1) == [b'{"status":"done","result":{"answer":42}}']


def test_raw_bytes_round_trip(fclient: Client) -> None:
    con = fclient.consumer("bin", "g", create=True)
    fclient.send("bin", b"\x00\xff")
    [msg] = receive(con)
    assert msg.body == b"\x00\xff"


def test_backlog_counts_undelivered(fclient: Client) -> None:
    fclient.create_topic("lag", 1)
    con = fclient.consumer("lag", "g")
    for i in range(3):
        fclient.send("lag", i)
    fclient.send("lag", 9, delay=60)
    assert con.backlog() == 4  # 3 not yet delivered + 1 delayed


def test_every_group_gets_every_message(fclient: Client) -> None:
    fclient.create_topic("fan", 2)
    a = fclient.consumer("fan", "a")
    b = fclient.consumer("fan", "b")
    ids = {fclient.send("fan", i) for i in range(4)}
    got_a, got_b = receive(a), receive(b)
    assert {m.id for m in got_a} == ids == {m.id for m in got_b}


def test_one_consumer_per_message_within_group(fclient: Client) -> None:
    fclient.create_topic("split", 1)
    c1 = fclient.consumer("split", "g", name="c1")
    c2 = fclient.consumer("split", "g", name="c2")
    for i in range(4):
        fclient.send("split", i)
    got1 = receive(c1, count=2)
    got2 = receive(c2, count=10)
    assert len(got1) + len(got2) == 4
    assert not {m.id for m in got1} & {m.id for m in got2}


def test_group_created_later_sees_retained_messages(fclient: Client) -> None:
    fclient.create_topic("late", 1)
    mid = fclient.send("late", "early")
    con = fclient.consumer("late", "newcomer")
    assert [m.id for m in receive(con)] == [mid]


def test_delayed_message_waits(fclient: Client) -> None:
    fclient.create_topic("later", 1)
    con = fclient.consumer("later", "g")
    mid = fclient.send("later", "x", delay=timedelta(seconds=60))
    now_id = fclient.send("later", "y")
    assert [m.id for m in receive(con)] == [now_id]
    assert receive(con) == []  # not due yet (by the server's clock)
    con.move_due(until_ms=now_ms() + 61_000)  # what is due by then is moved now
    got = receive(con)
    assert [m.id for m in got] == [mid]
    assert got[0].body == "x"


def test_retry_then_dead_letter_then_replay(fclient: Client, fake: fakeredis.FakeRedis) -> None:
    fclient.create_topic("work", 1)
    con = fclient.consumer("work", "g", max_retries=2)
    other = fclient.consumer("work", "other")
    mid = fclient.send("work", {"job": 1}, key="k", headers={"h": "v"})

    [msg] = receive(con)
    assert con.retry(msg, ValueError("boom"), delay=0) == "retry"
    [msg] = receive(con)
    assert (msg.id, msg.attempt, msg.from_retry) == (mid, 1, True)
    assert (msg.key, msg.headers, msg.body) == ("k", {"h": "v"}, {"job": 1})
    assert con.retry(msg, ValueError("boom"), delay=0) == "retry"
    [msg] = receive(con)
    assert msg.attempt == 2
    assert con.retry(msg, ValueError("boom again")) == "dead"
    assert receive(con) == []
    assert con.backlog() == 0

    [dead] = fclient.dead_letters("work", "g")
    assert (dead.id, dead.reason, dead.attempts, dead.body) == (
        mid,
        "ValueError: boom again",
        3,
        {"job": 1},
    )
    k = keys("work")
    stats = fake.hgetall(k.stats("g"))
    assert (stats[b"retried"], stats[b"dead"]) == (b"2", b"1")

    # The other group was not disturbed: it sees the message once, on its first attempt.
    [theirs] = receive(other)
    assert (theirs.id, theirs.attempt, theirs.from_retry) == (mid, 0, False)

    assert fclient.replay_dead_letters("work", "g") == 1
    assert fclient.dead_letters("work", "g") == []
    [msg] = receive(con)
    assert (msg.id, msg.attempt, msg.from_retry) == (mid, 0, True)
    con.ack(msg)
    assert con.backlog() == 0
    assert fake.xlen(k.retry_stream("g")) == 0


def test_replay_by_id(fclient: Client) -> None:
    fclient.create_topic("rp", 1)
    con = fclient.consumer("rp", "g", max_retries=0)
    ids = [fclient.send("rp", i) for i in range(3)]
    for m in receive(con):
        con.retry(m, "Failed: no")
    assert len(fclient.dead_letters("rp", "g")) == 3
    assert fclient.replay_dead_letters("rp", "g", ids=[ids[1]]) == 1
    assert [m.id for m in receive(con)] == [ids[1]]
    assert sorted(d.id for d in fclient.dead_letters("rp", "g")) == sorted([ids[0], ids[2]])


def test_undecodable_entry_is_dead_lettered(fclient: Client, fake: fakeredis.FakeRedis) -> None:
    fclient.create_topic("bad", 1)
    con = fclient.consumer("bad", "g")
    k = keys("bad")
    fake.xadd(k.stream, {"junk": "1"})
    fake.xadd(k.stream, {"id": "m-json", "body": "{nope"})
    good = fclient.send("bad", "fine")
    assert [m.id for m in receive(con)] == [good]
    reasons = sorted(d.reason for d in fclient.dead_letters("bad", "g"))
    assert len(reasons) == 2
    assert "lacks the field 'id'" in reasons[0]
    assert "body is not valid JSON" in reasons[1]
    assert fake.xpending(k.stream, "g")["pending"] == 1  # only the good one


def test_entry_with_deep_headers_is_dead_lettered(
    fclient: Client, fake: fakeredis.FakeRedis
) -> None:
    fclient.create_topic("deep", 1)
    con = fclient.consumer("deep", "g")
    fake.xadd(keys("deep").stream, {"id": "m", "body": "1", "headers": "[" * 50_000})
    assert receive(con) == []
    assert len(fclient.dead_letters("deep", "g")) == 1


def test_redelivered_completed_message_is_not_returned(
    fclient: Client, fake: fakeredis.FakeRedis
) -> None:
    fclient.create_topic("once", 1)
    con = fclient.consumer("once", "g")
    fclient.send("once", "hello")
    [msg] = receive(con)
    con.ack(msg)
    # The same message comes back (e.g. a lost XACK after failover, or a duplicate write).
    k = keys("once")
    fake.xadd(k.stream, msg.fields())
    assert receive(con) == []
    assert fake.hget(k.stats("g"), "duplicates") == b"1"
    assert fake.xpending(k.stream, "g")["pending"] == 0


def test_ack_many_counts_new_completions(fclient: Client) -> None:
    fclient.create_topic("am", 2)
    con = fclient.consumer("am", "g")
    for i in range(6):
        fclient.send("am", i)
    msgs = receive(con)
    assert con.ack_many(msgs) == 6
    assert con.ack_many(msgs) == 0
    assert con.ack_many([]) == 0


def test_expired_lease_is_claimed_and_renew_reports_loss(fclient: Client) -> None:
    fclient.create_topic("lease", 1)
    slow = fclient.consumer("lease", "g", name="slow")
    # A lease of 0.2 s: expired after 0.2 s idle, taken at once only after 2 s (ten leases:
    # a dead process's), so a stalled test thread has 1.7 s before the first look.
    fast = fclient.consumer("lease", "g", name="fast", visibility_timeout=0.2)
    mid = fclient.send("lease", "x")
    [held] = receive(slow)
    assert slow.renew([held]) == []
    time.sleep(0.3)
    assert receive(fast) == []  # seen expired once: taken at a second look
    time.sleep(0.7)  # past a renewal interval and the margin (0.57 s)
    [taken] = receive(fast)
    assert (taken.id, taken.entry_id) == (mid, held.entry_id)
    assert slow.renew([held]) == [held]
    assert fast.renew([taken]) == []


def test_release_hands_back_to_group(fclient: Client) -> None:
    fclient.create_topic("rel", 1)
    a = fclient.consumer("rel", "g", name="a")
    b = fclient.consumer("rel", "g", name="b")
    mid = fclient.send("rel", "x")
    [msg] = receive(a)
    a.release([msg])
    [again] = receive(b)
    assert (again.id, again.from_retry, again.attempt) == (mid, True, 0)
    b.ack(again)
    assert b.backlog() == 0


def test_consumer_bad_options(fclient: Client) -> None:
    fclient.create_topic("opt", 1)
    with pytest.raises(InvalidMessage, match="visibility_timeout must be positive"):
        fclient.consumer("opt", "g", visibility_timeout=0)
    with pytest.raises(InvalidMessage, match="must not contain"):
        fclient.consumer("opt", "bad group")


# -- trimming --------------------------------------------------------------------------------


def test_trim_keeps_unacknowledged(fclient: Client, fake: fakeredis.FakeRedis) -> None:
    fclient.create_topic("tr", 1, retention=2)
    con = fclient.consumer("tr", "g")
    for i in range(6):
        fclient.send("tr", i)
    msgs = receive(con)
    con.ack_many(msgs[:2])
    trimmed, dropped = fclient.trim("tr")
    assert dropped == 0
    k = keys("tr")
    remaining = {f[b"id"].decode() for _, f in fake.xrange(k.stream)}
    assert {m.id for m in msgs[2:]} <= remaining  # nothing still pending was removed
    assert trimmed == 6 - len(remaining)


def test_trim_hard_cap_drops_and_counts(fclient: Client, fake: fakeredis.FakeRedis) -> None:
    fclient.create_topic("cap", 1, retention=1, hard_cap=3)
    fclient.consumer("cap", "g")
    for i in range(5):
        fclient.send("cap", i)
    trimmed, dropped = fclient.trim("cap")
    assert (trimmed, dropped) == (0, 2)
    k = keys("cap")
    assert fake.xlen(k.stream) == 3
    assert fake.hget(k.counters, "dropped") == b"2"
