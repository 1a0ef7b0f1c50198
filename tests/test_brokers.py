"""Several brokers behind one meta Redis: placement, a dead broker, durable sends, drain and
remove, and the `broker`/`topic` commands — every broker a real local server."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator

import pytest
from click.testing import CliRunner
from conftest import wait_for
from sentinels import Servers

from redismq import Client
from redismq.brokers import (
    DRAIN_SETTLE,
    BrokerError,
    add_broker,
    drain_broker,
    list_brokers,
    remove_broker,
    unconsumed,
)
from redismq.cli.main import main
from redismq.errors import NotReplicated, QueueUnavailable
from redismq.keys import QueueKeys
from redismq.nameserver import NameServer
from redismq.routing import REFRESH_INTERVAL, queue_for_key
from redismq.server import LocalServer


@pytest.fixture
def servers() -> Iterator[Servers]:
    started = Servers()
    yield started
    started.stop_all()


@pytest.fixture
def brokers(client: Client, servers: Servers) -> dict[str, LocalServer]:
    """Three brokers b0, b1, b2 registered in the meta Redis of `client`."""
    found = {}
    for i in range(3):
        found[f"b{i}"] = servers.start()
        add_broker(client, f"b{i}", found[f"b{i}"].url)
    return found


@pytest.fixture
def nameserver(url: str) -> Iterator[NameServer]:
    """A NameServer checking every 0.2 s in a thread, stopped at the end."""
    ns_client = Client(url)
    ns = NameServer(ns_client, interval=0.2)
    thread = threading.Thread(target=ns.run, name="nameserver", daemon=True)
    thread.start()
    yield ns
    ns.stop()
    thread.join(10)
    ns_client.close()


def ids_on(server: LocalServer, topic: str, queues: int) -> list[str]:
    """Message ids stored in the streams of a topic on one server."""
    r = server.client()
    try:
        return [
            fields[b"id"].decode()
            for q in range(queues)
            for _, fields in r.xrange(QueueKeys("rmq", topic, q).stream)
        ]
    finally:
        r.close()


def registry(client: Client) -> dict:
    """Everything the NameServer registry holds, to check that a refused command changed
    nothing."""
    keys = client.router.keys
    return {
        "brokers": client.meta.hgetall(keys.brokers),
        "topics": client.meta.hgetall(keys.topics),
        "routes": client.meta.hgetall(keys.routes),
        "version": client.meta.get(keys.routes_version),
    }


def health(client: Client, name: str) -> dict:
    raw = client.meta.hget(client.router.keys.broker_health, name)
    return json.loads(raw) if raw else {}


def key_for(queue: int, queues: int) -> str:
    """A message key that maps to that queue."""
    return next(k for k in map(str, range(100_000)) if queue_for_key(k, queues) == queue)


def wait_drained(client: Client, name: str) -> None:
    """Sleep until the broker has been draining for DRAIN_SETTLE seconds (before that, every
    client may not have seen the drain yet, and `remove_broker` refuses)."""
    record = json.loads(client.meta.hget(client.router.keys.brokers, name))
    seconds, micros = client.meta.time()
    time.sleep(max(0.0, record["drained"] + DRAIN_SETTLE - (seconds + micros / 1e6)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- placement -------------------------------------------------------------------------
def test_queues_spread_over_brokers_and_adding_a_broker_moves_nothing(client, brokers, servers):
    topic = client.create_topic("orders", queues=12)
    counts = Counter(topic.placement)
    assert set(counts) == {"b0", "b1", "b2"}
    assert all(3 <= n <= 5 for n in counts.values()), counts

    # the messages of each queue are on that queue's broker, nowhere else
    client.send_many("orders", [{"n": i} for i in range(120)])
    for name, server in brokers.items():
        assert len(ids_on(server, "orders", 12)) == 10 * counts[name]

    add_broker(client, "b3", servers.start().url)
    assert Client(client.url).topic("orders", create=False).placement == topic.placement

    for name in [f"later-{i}" for i in range(5)]:
        later = Counter(client.create_topic(name, queues=12).placement)
        assert set(later) == {"b0", "b1", "b2", "b3"}, (name, later)
        assert all(2 <= n <= 4 for n in later.values()), (name, later)


# -- a broker dies ---------------------------------------------------------------------
@pytest.mark.parametrize("with_nameserver", [False, True], ids=["alone", "with-nameserver"])
def test_keyless_sends_continue_on_live_brokers_while_one_is_dead(
    url, client, brokers, with_nameserver, request
):
    ns = request.getfixturevalue("nameserver") if with_nameserver else None
    topic = client.create_topic("jobs", queues=6)
    victim = topic.placement[0]
    live = {n: s for n, s in brokers.items() if n != victim}
    for i in range(12):  # every broker in use (and connected) before one dies
        client.send("jobs", {"before": i})
    key = key_for(topic.placement.index(victim), 6)

    brokers[victim].kill()

    sent = [client.send_message("jobs", {"n": i}) for i in range(30)]
    assert all(topic.placement[s.queue] != victim for s in sent)
    stored = {i for s in live.values() for i in ids_on(s, "jobs", 6)}
    assert {s.id for s in sent} <= stored
    with pytest.raises(QueueUnavailable, match=re.escape(f"(broker '{victim}')")):
        client.send("jobs", {"keyed": 1}, key=key, timeout=0.5)  # waits for its broker
    if ns is not None:
        assert wait_for(lambda: health(client, victim).get("up") is False, timeout=10)

    brokers[victim].restart()

    assert wait_for(
        lambda: topic.placement[client.send_message("jobs", {"after": 1}).queue] == victim,
        timeout=15,
        every=0.05,
    )
    mid = client.send("jobs", {"keyed": 2}, key=key)
    assert mid in ids_on(brokers[victim], "jobs", 6)
    if ns is not None:
        assert wait_for(lambda: health(client, victim).get("up") is True, timeout=10)


# -- durability="replicated" -------------------------------------------------------------
def test_replicated_send_returns_once_a_replica_has_it(url, client, servers):
    master = servers.start()
    replica = servers.start(replica_of=master)
    add_broker(client, "r", master.url, [replica.url])
    client.create_topic("safe", queues=2)

    mid = client.send("safe", {"n": 1}, durability="replicated")
    # WAIT confirmed it: the replica holds it already
    assert mid in ids_on(replica, "safe", 2)
    by_default = Client(url, durability="replicated").send("safe", {"n": 2})
    assert by_default in ids_on(replica, "safe", 2)
    many = client.send_many("safe", [{"m": i} for i in range(5)], durability="replicated")
    assert set(many) <= set(ids_on(replica, "safe", 2))

    replica.stop()
    fast = Client(url, replica_timeout=0.2)
    with pytest.raises(NotReplicated) as raised:
        fast.send("safe", {"n": 3}, durability="replicated")
    assert raised.value.message_id in str(raised.value)
    # not confirmed is not lost: the master has it
    assert raised.value.message_id in ids_on(master, "safe", 2)


def test_replicated_send_without_a_replica_raises_naming_the_message(client, url, server):
    fast = Client(url, replica_timeout=0.2)
    with pytest.raises(NotReplicated, match=r"message [0-9a-f]{32} ") as raised:
        fast.send("lonely", {"n": 1}, durability="replicated")
    assert raised.value.message_id in str(raised.value)
    with pytest.raises(NotReplicated) as many:
        fast.send_many("lonely", [{"n": 2}, {"n": 3}], durability="replicated")
    # stored on the master, not confirmed: `sent` says where (sending them again would copy)
    assert many.value.sent is not None and None not in many.value.sent
    stored = ids_on(server, "lonely", fast.topic("lonely").queues)
    assert {s.id for s in many.value.sent} <= set(stored)
    fast.send("lonely", {"n": 4})  # the default durability does not wait


def test_resend_after_not_replicated_names_the_stored_message_and_adds_nothing(client, url):
    fast = Client(url, replica_timeout=0.2)
    with pytest.raises(NotReplicated) as first:
        fast.send("lonely", {"n": 1}, dedup_key="signup-1", durability="replicated")
    with pytest.raises(NotReplicated) as again:
        fast.send("lonely", {"n": 1}, dedup_key="signup-1", durability="replicated")
    stored = [
        f[b"id"].decode()
        for q in range(4)
        for _, f in client.meta.xrange(QueueKeys("rmq", "lonely", q).stream)
    ]
    assert stored == [first.value.message_id]
    assert again.value.message_id == first.value.message_id


# -- drain and remove ------------------------------------------------------------------
def test_drained_broker_gets_no_new_sends_and_is_removed_once_empty(client, brokers):
    topic = client.create_topic("mail", queues=6)
    gone = topic.placement[0]
    gone_queues = [q for q, b in enumerate(topic.placement) if b == gone]
    client.send_many("mail", [{"n": i} for i in range(30)])
    assert sum(unconsumed(client, "mail", q) for q in gone_queues) > 0

    drain_broker(client, gone)
    # another process learns of the drain at its next state refresh (REFRESH_INTERVAL);
    # a process that saw the broker active just before waits that long
    producer = Client(client.url)
    assert all(
        topic.placement[producer.send_message("mail", {"late": i}).queue] != gone for i in range(30)
    )
    before = registry(client)
    with pytest.raises(BrokerError, match="still holds unconsumed messages"):
        remove_broker(client, gone)
    assert registry(client) == before

    # a consumer empties the drained queues
    reader = client.consumer("mail", "mailer", queues=gone_queues)
    while batch := reader.receive(count=100, block=0.2):
        reader.ack_many(batch)
    assert sum(unconsumed(client, "mail", q) for q in gone_queues) == 0
    assert client.consumer("mail", "mailer").receive(count=100, block=0.2)  # others: untouched

    wait_drained(client, gone)
    remove_broker(client, gone)

    assert gone not in {b.name for b in list_brokers(client)}
    placement = Client(client.url).topic("mail", create=False).placement
    assert gone not in placement
    assert [p for q, p in enumerate(placement) if q not in gone_queues] == [
        p for q, p in enumerate(topic.placement) if q not in gone_queues
    ]
    # keyed messages of a moved queue now land on its new broker
    mid = Client(client.url).send("mail", {"moved": 1}, key=key_for(gone_queues[0], 6))
    assert mid in ids_on(brokers[placement[gone_queues[0]]], "mail", 6)


def test_a_broker_holding_queues_is_removed_only_after_a_drain(client, brokers, servers):
    topic = client.create_topic("mail", queues=6)
    holder = topic.placement[0]
    before = registry(client)
    with pytest.raises(BrokerError, match="not drained"):
        remove_broker(client, holder)
    assert registry(client) == before

    drain_broker(client, holder)
    # until every client has seen the drain (it may still be sending), removal waits
    started = time.monotonic()
    remove_broker(client, holder)
    assert time.monotonic() - started >= DRAIN_SETTLE * 0.9
    assert holder not in Client(client.url).topic("mail", create=False).placement

    add_broker(client, "spare", servers.start().url)  # holds no queue: removed at once
    remove_broker(client, "spare")
    assert "spare" not in {b.name for b in list_brokers(client)}


def test_a_producer_with_cached_routes_never_sends_to_a_removed_broker(client, brokers):
    """Clients cache routes and broker states (re-read every REFRESH_INTERVAL). A producer
    sending while a broker is removed must never strand a message on the removed broker,
    where nobody reads it: it re-routes, or fails clearly, and soon uses the new route."""
    topic = client.create_topic("mail", queues=6)
    gone = topic.placement[0]
    moved = [q for q, b in enumerate(topic.placement) if b == gone]
    key = key_for(moved[0], 6)
    producer = Client(client.url)
    producer.send("mail", {"warm": 1}, key=key)  # routes cached, connection open
    reader = client.consumer("mail", "g", queues=moved)
    reader.ack_many(reader.receive(count=10, block=0.2))
    drain_broker(client, gone)
    wait_drained(client, gone)
    stranded_before = set(ids_on(brokers[gone], "mail", 6))

    outcomes: list[str] = []
    stop = threading.Event()

    def produce() -> None:
        while not stop.is_set():
            try:
                producer.send("mail", {"keyed": 1}, key=key)
                producer.send("mail", {"keyless": 1})
                outcomes.append("sent")
            except QueueUnavailable:
                outcomes.append("refused")
            time.sleep(0.01)

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    try:
        time.sleep(0.2)
        remove_broker(client, gone)
        new_home = Client(client.url).topic("mail", create=False).placement[moved[0]]
        assert wait_for(lambda: outcomes[-5:] == ["sent"] * 5, timeout=REFRESH_INTERVAL * 5)
    finally:
        stop.set()
        thread.join(10)

    assert set(ids_on(brokers[gone], "mail", 6)) == stranded_before
    assert producer.send("mail", {"last": 1}, key=key) in ids_on(brokers[new_home], "mail", 6)


def test_keyed_send_to_a_drained_queue_fails_clearly(client, brokers):
    """A drained broker's queues are read-only: a keyed message cannot move to another
    queue (its order), so it fails with QueueUnavailable instead of landing there."""
    topic = client.create_topic("mail", queues=6)
    gone = topic.placement[0]
    drain_broker(client, gone)
    producer = Client(client.url)
    with pytest.raises(QueueUnavailable, match="drain"):
        producer.send("mail", {"keyed": 1}, key=key_for(0, 6))
    assert ids_on(brokers[gone], "mail", 6) == []


def test_drain_is_seen_by_a_running_producer_within_the_refresh_interval(client, brokers):
    topic = client.create_topic("mail", queues=6)
    gone = topic.placement[0]
    producer = Client(client.url)
    producer.send_many("mail", [{"n": i} for i in range(6)])  # it has read the states

    drain_broker(client, gone)

    def next_send_avoids() -> bool:
        return topic.placement[producer.send_message("mail", {}).queue] != gone

    assert wait_for(
        lambda: all(next_send_avoids() for _ in range(6)),
        timeout=REFRESH_INTERVAL * 5,
    )


# -- the commands ----------------------------------------------------------------------
def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.output


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.lower().startswith("error:")]


def test_broker_commands_add_list_drain_undrain_remove(client, url, servers):
    master = servers.start(password="s3cret")
    replica = servers.start(replica_of=master, password="s3cret")
    other = servers.start()

    code, out = invoke("broker", "list", "--url", url)
    assert code == 0 and "no brokers registered" in out
    code, out = invoke("broker", "add", "b1", master.url, "--replica", replica.url, "--url", url)
    assert code == 0, out
    assert "s3cret" not in out and "***" in out
    code, out = invoke("broker", "add", "b2", other.url, "--url", url)
    assert code == 0, out
    NameServer(Client(url)).check_all()  # one round of health, as a running NameServer would

    code, out = invoke("broker", "list", "--json", "--url", url)
    assert code == 0, out
    assert "s3cret" not in out
    listed = {b["name"]: b for b in json.loads(out)}
    assert set(listed) == {"b1", "b2"}
    b1 = listed["b1"]
    assert (b1["state"], b1["health"]["up"], b1["health"]["master"]["role"]) == (
        "active",
        True,
        "master",
    )
    assert b1["health"]["address"] == f"127.0.0.1:{master.port}"
    [r] = b1["health"]["replicas"]
    assert r["up"] is True and r["lag"] >= 0 and "***" in r["url"]
    code, out = invoke("broker", "list", "--url", url)
    assert code == 0 and "b1" in out and "b2" in out and "s3cret" not in out

    code, out = invoke("broker", "drain", "b2", "--url", url)
    assert code == 0 and "draining" in out
    assert {b.name: b.state for b in list_brokers(client)} == {"b1": "active", "b2": "draining"}
    code, out = invoke("broker", "undrain", "b2", "--url", url)
    assert code == 0, out
    assert list_brokers(client)[1].state == "active"

    code, out = invoke("broker", "remove", "b2", "--url", url)
    assert code == 0, out
    assert [b.name for b in list_brokers(client)] == ["b1"]
    assert client.meta.hget(client.router.keys.broker_health, "b2") is None


def test_topic_describe_and_expand(client, url, brokers):
    code, out = invoke("topic", "create", "jobs", "--queues", "6", "--url", url)
    assert code == 0, out
    topic = client.topic("jobs", create=False)
    for i in range(5):
        client.send("jobs", {"n": i}, key="k")
    client.send("jobs", {"later": 1}, key="k", delay=3600)
    keyed = queue_for_key("k", 6)

    code, out = invoke("topic", "describe", "jobs", "--json", "--url", url)
    assert code == 0, out
    described = json.loads(out)
    assert described["name"] == "jobs" and described["route_version"] > 0
    rows = described["queues"]
    assert [(r["queue"], r["broker"], r["state"]) for r in rows] == [
        (q, b, "active") for q, b in enumerate(topic.placement)
    ]
    assert [(r["length"], r["backlog"]) for r in rows] == [
        (5, 6) if q == keyed else (0, 0) for q in range(6)
    ]
    code, out = invoke("topic", "describe", "jobs", "--url", url)
    assert code == 0 and "jobs" in out and "b0" in out

    code, out = invoke("topic", "expand", "jobs", "--queues", "9", "--url", url)
    assert code == 0, out
    expanded = Client(url).topic("jobs", create=False)
    assert expanded.queues == 9 and expanded.placement[:6] == topic.placement
    assert set(expanded.placement) <= set(brokers)
    code, out = invoke("topic", "list", "--url", url)
    assert code == 0 and out.split() == ["jobs"]

    brokers[topic.placement[keyed]].kill()
    code, out = invoke("topic", "describe", "jobs", "--url", url)
    assert code == 0, out
    assert "unreachable" in out


def test_every_new_command_has_help_with_an_example():
    for command in [
        ["broker"],
        ["broker", "add"],
        ["broker", "list"],
        ["broker", "drain"],
        ["broker", "undrain"],
        ["broker", "remove"],
        ["topic"],
        ["topic", "describe"],
        ["topic", "expand"],
        ["nameserver"],
    ]:
        code, out = invoke(*command, "--help")
        assert code == 0 and "Example: redismq" in out, command
        if command not in (["broker"], ["topic"]):
            assert "--url" in out, command


UNREACHABLE = "redis://:pw0rd@127.0.0.1:{port}/0"

BAD_INPUTS = [
    pytest.param(1, ["broker", "drain", "nope"], "not registered", id="drain-unknown"),
    pytest.param(1, ["broker", "undrain", "nope"], "not registered", id="undrain-unknown"),
    pytest.param(1, ["broker", "remove", "nope"], "not registered", id="remove-unknown"),
    pytest.param(1, ["broker", "add", "b0", "{b9}"], "registered already", id="duplicate-name"),
    pytest.param(1, ["broker", "add", "b9", "{b0}"], "registered already", id="duplicate-url"),
    pytest.param(1, ["broker", "add", "b9", UNREACHABLE], "does not answer", id="unreachable"),
    pytest.param(1, ["broker", "add", "b 9", "{b9}"], "must not contain", id="bad-name"),
    pytest.param(1, ["broker", "add", "b9", "http://x:1/0"], "scheme", id="bad-scheme"),
    pytest.param(1, ["broker", "add", "b9", "{b9}", "--replica", UNREACHABLE], "answer", id="rep"),
    pytest.param(1, ["broker", "remove", "b0"], "unconsumed", id="remove-in-use"),
    pytest.param(2, ["broker", "add", "b9"], "URL", id="add-no-url"),
    pytest.param(2, ["topic", "create", "x", "--queues", "0"], "0", id="zero-queues"),
    pytest.param(2, ["topic", "expand", "jobs", "--queues", "0"], "0", id="expand-zero"),
    pytest.param(1, ["topic", "expand", "jobs", "--queues", "2"], "larger", id="expand-fewer"),
    pytest.param(1, ["topic", "expand", "jobs", "--queues", "3"], "larger", id="expand-same"),
    pytest.param(1, ["topic", "expand", "nope", "--queues", "8"], "does not exist", id="expand-?"),
    pytest.param(1, ["topic", "describe", "nope"], "does not exist", id="describe-unknown"),
]


@pytest.mark.parametrize(("expected", "args", "says"), BAD_INPUTS)
def test_bad_input_is_one_clear_error_and_changes_nothing(
    client, url, brokers, servers, expected, args, says
):
    client.create_topic("jobs", queues=3)
    for q in range(3):  # a message on every queue: every broker holding one is in use
        client.send("jobs", {"q": q}, key=key_for(q, 3))
    spare = servers.start()
    args = [a.format(b0=brokers["b0"].url, b9=spare.url, port=free_port()) for a in args]
    if args[:3] == ["broker", "remove", "b0"]:
        args[2] = client.topic("jobs").placement[0]
    before = registry(client)

    code, out = invoke(*args, "--url", url)

    assert code == expected, out
    assert "Traceback" not in out and "pw0rd" not in out
    assert says in out, out
    if expected == 1:
        assert len(error_lines(out)) == 1 and out.strip().count("\n") == 0, out
    assert registry(client) == before


def test_a_topic_can_make_replicated_its_default_durability(client, url):
    fast = Client(url, replica_timeout=0.2)
    fast.create_topic("careful", queues=1, durability="replicated")
    with pytest.raises(NotReplicated):
        fast.send("careful", {"n": 1})  # no replica: the topic's default waits for one
    assert fast.send("careful", {"n": 2}, durability="master")  # a send may say otherwise


def test_a_worker_started_while_a_broker_is_down_says_so_in_one_line(servers, processes):
    meta, b1 = servers.start(), servers.start()
    client = Client(meta.url)
    add_broker(client, "b1", b1.url)
    client.create_topic("work", queues=2)
    b1.kill()
    worker = processes.start(
        "worker",
        "tests.apps.worker_app:app",
        "--url",
        meta.url,
        "--processes",
        "1",
        "--topic",
        "work",
        "--log-level",
        "WARNING",
    )
    assert worker.wait(60) == 1
    out = worker.stdout.read()
    assert "worker cannot start" in out and "Traceback" not in out


def test_a_consumer_error_names_the_broker_that_failed(servers):
    from redismq import BrokerUnavailable

    meta, b1 = servers.start(), servers.start()
    client = Client(meta.url)
    add_broker(client, "b1", b1.url)
    client.create_topic("named", queues=1)
    consumer = client.consumer("named", "g")
    b1.kill()
    with pytest.raises(BrokerUnavailable) as err:
        consumer.receive(count=1, block=0.1)
    assert f":{b1.port}/" in str(err.value) and f":{meta.port}/" not in str(err.value)


def test_async_replicated_send_waits_on_the_connection_that_wrote(client, servers):
    """WAIT counts the replicas that have its own connection's writes: the async client's
    send and WAIT share one connection, so a confirmed send is on the replica."""

    from redismq import AsyncClient

    master = servers.start()
    replica = servers.start(replica_of=master)
    add_broker(client, "r", master.url, [replica.url])
    client.create_topic("safe", queues=2)

    async def send() -> list[str]:
        async with AsyncClient(client.url) as ac:
            return [(await ac.send("safe", {"n": i}, durability="replicated")) for i in range(5)]

    sent = asyncio.run(send())
    assert set(sent) <= set(ids_on(replica, "safe", 2))
