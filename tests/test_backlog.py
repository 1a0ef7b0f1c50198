"""One definition of a queue's backlog (redismq/backlog.py): the `send` script's Lua mirror
gives the same numbers, and every reader (status, dashboard, broker removal, the --burst
exit) shows the same backlog — in every state a queue can be in, on a real server."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from redismq import Client
from redismq.backlog import read_queue
from redismq.brokers import unconsumed
from redismq.keys import QueueKeys
from redismq.message import now_ms
from redismq.status import topic_status
from tests.conftest import round_trips

TOPIC = "b"


def k() -> QueueKeys:
    return QueueKeys("rmq", TOPIC, 0)


def send(client: Client, n: int, **options) -> None:
    for i in range(n):
        client.send(TOPIC, {"n": i}, **options)


# Each state: (what it builds, the queue's backlog, each group's backlog)
def no_group_yet(client: Client) -> None:
    send(client, 3)


def known_group_not_on_the_stream(client: Client) -> None:
    send(client, 3)
    client.router.add_group(TOPIC, "late")  # known to the topic, not created on the stream


def undelivered(client: Client) -> None:
    client.consumer(TOPIC, "g")
    send(client, 5)


def pending(client: Client) -> None:
    c = client.consumer(TOPIC, "g")
    send(client, 5)
    assert len(c.receive(count=2, block=0.5)) == 2


def retrying(client: Client) -> None:
    c = client.consumer(TOPIC, "g", max_retries=5)
    send(client, 4)
    got = c.receive(count=4, block=0.5)
    c.ack_many(got[:1])
    c.retry(got[1], "failed", delay=60)  # waiting in the retry zset
    c.retry(got[2], "failed", delay=60)
    c.move_due(until_ms=now_ms() + 120_000)  # now in the retry stream, not delivered
    c.retry(got[3], "failed", delay=60)


def retry_pending(client: Client) -> None:
    c = client.consumer(TOPIC, "g", max_retries=5)
    send(client, 2)
    got = c.receive(count=2, block=0.5)
    c.retry(got[0], "failed", delay=60)
    c.move_due(until_ms=now_ms() + 120_000)
    c._next_move = float("inf")  # read the retry stream without moving anything
    again = c.receive(count=5, block=0.5)
    assert [m.id for m in again] == [got[0].id]  # pending again, on the retry stream


def delayed(client: Client) -> None:
    client.consumer(TOPIC, "g")
    send(client, 2)
    send(client, 3, delay=3600)


def two_groups(client: Client) -> None:
    fast, slow = client.consumer(TOPIC, "fast"), client.consumer(TOPIC, "slow")
    send(client, 6)
    fast.ack_many(fast.receive(count=10, block=0.5))
    assert len(slow.receive(count=2, block=0.5)) == 2


def all_done(client: Client) -> None:
    c = client.consumer(TOPIC, "g")
    send(client, 4)
    c.ack_many(c.receive(count=10, block=0.5))


def hard_cap_dropped_undelivered(client: Client) -> None:
    client.consumer(TOPIC, "g")
    send(client, 6)
    client.trim(TOPIC)  # drops 3 entries the group never read: its lag still counts them


hard_cap_dropped_undelivered.settings = {"hard_cap": 3, "retention": 3}  # type: ignore[attr-defined]


def lag_unknown(client: Client) -> None:
    c = client.consumer(TOPIC, "g")
    send(client, 5)
    c.ack_many(c.receive(count=1, block=0.5))
    last = client.meta.xrevrange(k().stream, count=1)[0][0]
    client.meta.xdel(k().stream, last)  # by hand: the server can no longer tell the lag


STATES: list[tuple[Callable[[Client], None], int, dict[str, int]]] = [
    (no_group_yet, 3, {}),
    (known_group_not_on_the_stream, 3, {"late": 3}),
    (undelivered, 5, {"g": 5}),
    (pending, 5, {"g": 5}),
    (retrying, 3, {"g": 3}),
    (retry_pending, 2, {"g": 2}),
    (delayed, 5, {"g": 5}),
    (two_groups, 6, {"fast": 0, "slow": 6}),
    (all_done, 0, {"g": 0}),
    (hard_cap_dropped_undelivered, 3, {"g": 3}),
    (lag_unknown, 3, {"g": 3}),
]


each_state = pytest.mark.parametrize(
    ("build", "backlog", "per_group"), STATES, ids=[s[0].__name__ for s in STATES]
)


def make(client: Client, build: Callable[[Client], None]) -> Client:
    """The topic (one queue) in the state `build` makes."""
    client.create_topic(TOPIC, queues=1, **getattr(build, "settings", {}))
    build(client)
    return client


def lua_backlog(client: Client, groups: list[str]) -> tuple[int, list[int]]:
    q = k()
    keys = [q.stream, q.delayed]
    for g in groups:
        keys += [q.retry_stream(g), q.retry(g)]
    total, *each = client.router.meta_scripts.backlog(keys=keys, args=groups)
    return total, each


@pytest.mark.parametrize(
    ("build", "backlog", "per_group"), STATES, ids=[s[0].__name__ for s in STATES]
)
def test_the_lua_backlog_equals_the_python_one(client, build, backlog, per_group):
    make(client, build)
    groups = client.router.groups(TOPIC)
    counts = read_queue(client.meta, k(), groups)
    assert (counts.backlog, {g: counts.group_backlog(g) for g in groups}) == (backlog, per_group)
    assert lua_backlog(client, groups) == (backlog, [per_group[g] for g in groups])


@pytest.mark.parametrize(
    ("build", "backlog", "per_group"), STATES, ids=[s[0].__name__ for s in STATES]
)
def test_every_reader_shows_the_same_backlog(client, build, backlog, per_group):
    from redismq.cli.dashboard_data import gather

    make(client, build)
    fresh = Client(client.url)  # no cached routes
    assert topic_status(fresh, TOPIC)["backlog"] == backlog
    assert unconsumed(fresh, TOPIC, 0) == backlog
    [shown] = [t for t in gather(fresh)["topics"] if t["name"] == TOPIC]
    assert shown["backlog"] == backlog
    for group, expected in per_group.items():
        assert fresh.consumer(TOPIC, group).backlog() == expected, group


@pytest.mark.parametrize(
    ("build", "backlog", "per_group"), STATES, ids=[s[0].__name__ for s in STATES]
)
def test_a_bounded_send_is_refused_exactly_at_the_backlog(client, build, backlog, per_group):
    make(client, build)
    from redismq.sending import prepare_message, send_script_call

    msg = prepare_message({"probe": 1})
    groups = client.router.groups(TOPIC)
    cases = [(backlog, -1), (backlog + 1, 1)] if backlog else [(1, 1)]  # bound 0: no bound
    for bound, outcome in cases:
        keys, args = send_script_call(k(), msg, 0, bound, groups)
        assert client.router.meta_scripts.send(keys=keys, args=args)[1] == outcome, bound


def test_a_consumers_backlog_is_one_script_round_trip_however_many_consumers(client):
    """What a --burst worker's idle threads ask before they exit: it parsed every consumer's
    XINFO CONSUMERS entry of every queue (at --concurrency 200, most of the worker's CPU
    at the end of a drain); now the `backlog` script answers per queue with a number."""
    client.create_topic(TOPIC, queues=4)
    consumers = [client.consumer(TOPIC, "g") for _ in range(30)]
    for c in consumers:
        c.receive(count=1, block=None)  # each one is now a consumer of every stream
    send(client, 8)
    assert len(consumers[0].receive(count=3, block=None)) == 3
    assert consumers[1].backlog() == 8  # (a fresh server's first call loads the script)
    with round_trips() as trips:
        assert consumers[1].backlog() == 8
    assert len(trips) == 1 and b"XINFO" not in trips[0].upper()
