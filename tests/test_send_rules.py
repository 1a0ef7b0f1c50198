"""The rules of a send, checked against the sync Client and the AsyncClient alike (each test
runs once per producer): back-pressure per topic, and sends that ride out a short outage."""

from __future__ import annotations

import json
import threading
import time

import pytest

from redismq import BrokerUnavailable, Client, QueueUnavailable, TopicFull
from redismq.keys import QueueKeys, job_index
from redismq.server import LocalServer
from tests.producers import drop_first_reply, key_for
from tests.proxy import ReplyDropper


def lengths(client: Client, topic: str, queues: int) -> list[int]:
    return [client.meta.xlen(QueueKeys("rmq", topic, q).stream) for q in range(queues)]


def stored_ids(conn, topic: str, queues: int) -> list[str]:
    """The message ids of every entry of a topic's streams."""
    return [
        f[b"id"].decode()
        for q in range(queues)
        for _, f in conn.xrange(QueueKeys("rmq", topic, q).stream)
    ]


# -- back-pressure per topic (issue 11 part 5) ---------------------------------------------


def test_keyless_send_skips_a_full_queue_and_refuses_only_when_all_are_full(producers, client):
    p = producers()
    p.create_topic("bp", queues=4, max_backlog=8)  # room for 2 per queue
    key = key_for(0, 4)
    p.send("bp", "k0", key=key)
    p.send("bp", "k1", key=key)  # queue 0 is full, the topic holds 2 of 8
    for i in range(6):
        p.send("bp", {"n": i})
    assert lengths(client, "bp", 4) == [2, 2, 2, 2]
    with pytest.raises(TopicFull, match="bound of 8"):
        p.send("bp", "over")
    with pytest.raises(TopicFull):
        p.send("bp", "k2", key=key)
    assert lengths(client, "bp", 4) == [2, 2, 2, 2]


def test_a_bounded_batch_that_fills_the_topic_says_which_messages_it_stored(producers, client):
    """send_many to a bounded topic sends one by one; when the topic is full, TopicFull's
    `sent` gives where the first messages went and None for the rest."""
    p = producers()
    p.create_topic("bp", queues=2, max_backlog=4)
    with pytest.raises(TopicFull) as full:
        p.send_many("bp", [{"n": i} for i in range(6)])
    sent = full.value.sent
    assert [s is None for s in sent] == [False] * 4 + [True] * 2
    assert sorted(stored_ids(client.meta, "bp", 2)) == sorted(s.id for s in sent[:4])


def test_keyed_send_waits_for_its_own_queue_not_another(producers, client):
    p = producers()
    p.create_topic("bp", queues=4, max_backlog=8)
    key = key_for(1, 4)
    p.send("bp", 1, key=key)
    p.send("bp", 2, key=key)
    started = time.monotonic()
    with pytest.raises(TopicFull):
        p.send("bp", 3, key=key, on_full="block", timeout=0.3)
    assert time.monotonic() - started >= 0.3
    assert lengths(client, "bp", 4) == [0, 2, 0, 0]


def test_blocked_keyless_send_takes_the_first_queue_that_has_room(producers, client):
    p = producers()
    p.create_topic("bp", queues=4, max_backlog=8)
    consumer = client.consumer("bp", "g", queues=[3])
    for q in range(4):
        for i in range(2):
            p.send("bp", {"q": q, "i": i}, key=key_for(q, 4))

    def free_one() -> None:
        time.sleep(0.3)
        consumer.ack_many(consumer.receive(count=1, block=1.0))

    thread = threading.Thread(target=free_one)
    thread.start()
    try:
        sent = p.send_message("bp", "waited", on_full="block", timeout=10)
    finally:
        thread.join()
    assert sent.queue == 3
    assert lengths(client, "bp", 4) == [2, 2, 2, 3]


# -- a send rides out a short outage (issue 16 part 1) -------------------------------------


@pytest.mark.parametrize(
    ("keyed", "bound", "task"),
    [(False, 0, False), (True, 0, False), (False, 100, False), (False, 0, True), (True, 0, True)],
    ids=["keyless", "keyed", "bounded", "task", "keyed-task"],
)
def test_a_retry_after_a_dropped_reply_does_not_send_twice(producers, client, keyed, bound, task):
    p = producers()
    p.create_topic("once", queues=2, max_backlog=bound)  # bounded: the script writes
    dropped = drop_first_reply(p)
    index_as = ("workers", "signup") if task else None  # a task's send: indexed by its id
    sent = p.send_message("once", {"n": 1}, key="k" if keyed else None, index_as=index_as)
    assert dropped, "the first attempt ran on the server"
    assert stored_ids(client.meta, "once", 2) == [sent.id]
    if task:  # its id index is the record the retry found: no other record of the id
        assert client.meta.get(job_index("rmq", sent.id)) is not None
        assert not client.meta.exists(QueueKeys("rmq", "once", sent.queue).sent(sent.id))


@pytest.mark.parametrize("keyed", [False, True], ids=["keyless", "keyed"])
def test_send_raises_as_before_once_its_timeout_passed(producers, keyed):
    with LocalServer() as srv:
        p = producers(srv.url, send_timeout=30)
        p.create_topic("away", queues=2)
        p.send("away", "warm")  # topic and routes cached, connection open
        srv.kill()
        started = time.monotonic()
        error = QueueUnavailable if keyed else BrokerUnavailable
        with pytest.raises(error, match="cannot reach Redis"):
            p.send("away", "lost", key="k" if keyed else None, timeout=0.6)
        assert 0.6 <= time.monotonic() - started < 10  # its own timeout, not the client's 30 s


def test_a_batch_raises_once_its_timeout_passed_saying_nothing_was_stored(producers):
    """send_many to a broker that stays away tries again until its timeout, then raises
    with `sent` None for every message."""
    with LocalServer() as srv:
        p = producers(srv.url, send_timeout=30)
        p.create_topic("away", queues=2)
        p.send_many("away", ["warm"])
        srv.kill()
        started = time.monotonic()
        with pytest.raises(BrokerUnavailable, match="cannot reach Redis") as raised:
            p.send_many("away", ["lost", "too"], timeout=0.6)
        assert 0.6 <= time.monotonic() - started < 10
        assert raised.value.sent == [None, None]


@pytest.mark.parametrize("batch", [1, 5], ids=["send", "send_many"])
def test_sends_ride_out_a_server_restart(producers, producer_kind, batch):
    """Sends (one by one, or five at a time with send_many) run while the server is killed
    and started again a second later: no send raises, none is stored twice, none is lost."""
    # appendfsync always: what the server acknowledged survives SIGKILL
    with LocalServer(persistence=True, extra_args=["--appendfsync", "always"]) as srv:
        p = producers(srv.url, send_timeout=15)
        p.create_topic("signup", queues=4)
        sent: list[str] = []
        errors: list[BaseException] = []
        started = threading.Event()

        def produce(n: int, each: int) -> None:
            for i in range(0, each, batch):
                try:
                    if batch > 1:
                        sent.extend(p.send_many("signup", [{"p": n, "i": i + j} for j in range(5)]))
                    else:
                        key = f"user-{i % 7}" if i % 2 else None
                        sent.append(p.send("signup", {"p": n, "i": i}, key=key))
                except BaseException as exc:  # noqa: BLE001 - counted and reported
                    errors.append(exc)
                started.set()
                time.sleep(0.003)

        if producer_kind == "sync":
            threads = [threading.Thread(target=produce, args=(n, 150)) for n in range(3)]
            for t in threads:
                t.start()
        else:  # one event loop: the async producer is used from one thread
            threads = [threading.Thread(target=produce, args=(0, 450))]
            threads[0].start()
        assert started.wait(10)
        time.sleep(0.2)
        srv.kill()
        time.sleep(1.0)
        srv.restart()
        for t in threads:
            t.join(60)
        assert errors == []
        stored = stored_ids(srv.client(), "signup", 4)
        assert len(sent) == 450
        assert sorted(stored) == sorted(set(stored)), "a message was stored twice"
        assert set(stored) == set(sent)


# -- several brokers: the async client keeps the sync client's rules (issue 15) ------------


@pytest.fixture
def brokers(client: Client):
    """Three brokers b0, b1, b2 registered in the meta Redis of `client`."""
    from sentinels import Servers

    from redismq.brokers import add_broker

    started = Servers()
    found = {}
    for i in range(3):
        found[f"b{i}"] = started.start()
        add_broker(client, f"b{i}", found[f"b{i}"].url)
    yield found
    started.stop_all()


def test_new_queues_are_not_placed_on_a_draining_broker(producers, client, brokers):
    from redismq.brokers import drain_broker

    drain_broker(client, "b0")
    placement = producers().create_topic("fresh", queues=6).placement
    assert "b0" not in placement and set(placement) == {"b1", "b2"}


def test_keyless_sends_skip_a_dead_broker_and_keyed_ones_wait_for_theirs(
    producers, client, brokers
):
    topic = client.create_topic("jobs", queues=6)
    victim = topic.placement[0]
    p = producers(send_timeout=0.5)
    p.send_many("jobs", [{"warm": i} for i in range(12)])  # every broker connected
    brokers[victim].kill()
    sent = [p.send_message("jobs", {"n": i}) for i in range(12)]
    assert all(topic.placement[s.queue] != victim for s in sent)
    live = [s for name, s in brokers.items() if name != victim]
    stored = {i for s in live for i in stored_ids(s.client(), "jobs", 6)}
    assert {s.id for s in sent} <= stored
    with pytest.raises(QueueUnavailable, match=f"broker '{victim}'"):
        p.send("jobs", {"keyed": 1}, key=key_for(0, 6))


def test_a_batch_part_a_dead_broker_failed_goes_to_the_live_brokers(producers, client, brokers):
    """send_many while a broker is dead and not yet known so: the dead broker's part moves to
    the other brokers' queues, as a single keyless send does; every message is stored once,
    and `send_many` returns where each went."""
    topic = client.create_topic("jobs", queues=6)
    victim = topic.placement[0]
    p = producers(send_timeout=5)
    warm = set(p.send_many("jobs", [{"warm": i} for i in range(12)]))  # every broker connected
    brokers[victim].kill()
    sent = p.send_many_messages("jobs", [{"n": i} for i in range(60)])
    assert len(sent) == 60 and all(s.entry_id is not None for s in sent)
    assert all(topic.placement[s.queue] != victim for s in sent)
    live = [s.client() for name, s in brokers.items() if name != victim]
    stored = [i for conn in live for i in stored_ids(conn, "jobs", 6) if i not in warm]
    assert sorted(stored) == sorted(s.id for s in sent)
    bodies_stored = [
        f[b"body"]
        for conn in live
        for q in range(6)
        for _, f in conn.xrange(QueueKeys("rmq", "jobs", q).stream)
    ]
    ns = sorted(json.loads(b)["n"] for b in bodies_stored if b"warm" not in b)
    assert ns == list(range(60))


def test_a_removed_broker_in_cached_routes_sends_to_the_queues_new_home(producers, client, brokers):
    """A keyed send whose cached route names a broker removed meanwhile is refused as
    draining (QueueUnavailable) or lands on the queue's new home, and soon only lands."""
    from redismq.brokers import drain_broker, remove_broker
    from tests.test_brokers import wait_drained

    topic = client.create_topic("mail", queues=6)
    gone = topic.placement[0]
    elsewhere = next(q for q, b in enumerate(topic.placement) if b != gone)
    p = producers()
    drain_broker(client, gone)
    wait_drained(client, gone)
    p.send("mail", "warm", key=key_for(elsewhere, 6))  # routes cached; `gone` never used
    remove_broker(client, gone)
    refused: list[QueueUnavailable] = []
    deadline = time.monotonic() + 5
    while True:
        try:
            sent = p.send_message("mail", "moved", key=key_for(0, 6))
            break
        except QueueUnavailable as exc:
            refused.append(exc)
            assert time.monotonic() < deadline, refused[-1]
            time.sleep(0.1)
    assert all("draining" in str(e) for e in refused)
    home = Client(client.url).topic("mail", create=False).placement[0]
    assert home != gone
    assert sent.id in stored_ids(brokers[home].client(), "mail", 6)


def test_a_topics_durability_is_the_default_of_its_sends(producers, client):
    client.create_topic("safe", queues=1, durability="replicated")
    p = producers(replica_timeout=0.2)
    from redismq import NotReplicated

    with pytest.raises(NotReplicated):  # no replica: the send waited for one
        p.send("safe", {"n": 1})
    p.send("safe", {"n": 2}, durability="master")


def test_a_tasks_send_takes_a_timeout_for_its_broker(client):
    from redismq import App

    with LocalServer() as srv:
        app = App(Client(srv.url, send_timeout=30))

        @app.task(topic="mail")
        def welcome(user: int) -> None: ...

        welcome.send(1)
        srv.kill()
        started = time.monotonic()
        with pytest.raises(BrokerUnavailable):
            welcome.send_with_options(args=(2,), timeout=0.4)
        assert 0.4 <= time.monotonic() - started < 20


def test_a_tasks_async_send_can_ask_for_a_replica(url):
    import asyncio

    from redismq import App, NotReplicated

    app = App(Client(url, replica_timeout=0.2))

    @app.task(topic="safe")
    def store(n: int) -> None: ...

    async def main() -> None:
        try:
            with pytest.raises(NotReplicated):  # no replica: the send waited for one
                await store.send_with_options_async(args=(1,), durability="replicated")
            await store.send_with_options_async(args=(2,))
        finally:
            await app.async_client.aclose()

    asyncio.run(main())


def test_a_resend_after_an_expand_finds_the_first_message(producers, client):
    from redismq.brokers import expand_topic

    p = producers()
    p.create_topic("signup", queues=2)
    keys = [f"user-{i}" for i in range(20)]
    first = {k: p.send("signup", {"k": k}, dedup_key=k) for k in keys}
    expand_topic(client, "signup", 7)
    fresh = producers()  # reads the expanded topic
    assert {k: fresh.send("signup", {"k": k}, dedup_key=k) for k in keys} == first


@pytest.mark.parametrize("task", [False, True], ids=["message", "task"])
def test_a_send_after_the_server_forgot_its_scripts_loads_them_again(producers, client, task):
    p = producers()
    p.create_topic("flushed", queues=2)
    index_as = ("workers", "signup") if task else None
    first = p.send_message("flushed", {"n": 1}, index_as=index_as)
    client.meta.script_flush()  # as after a restart without persistence, or a failover
    second = p.send_message("flushed", {"n": 2}, index_as=index_as)
    assert sorted(stored_ids(client.meta, "flushed", 2)) == sorted([first.id, second.id])


@pytest.mark.parametrize(
    ("task", "send_timeout"),
    [(False, 10), (True, 10), (False, 0)],
    ids=["message", "task", "no-retries"],
)
def test_a_reply_lost_after_the_send_ran_does_not_store_it_twice(
    producers, client, url, task, send_timeout
):
    """The connection resets after the server ran the send, before its reply came back:
    the call made again (by redis-py's reconnect, or by the send's own retry) finds the
    message and stores nothing more; a send that may not retry (timeout 0) too."""
    proxy = ReplyDropper(int(url.rsplit(":", 1)[1].split("/")[0]))
    try:
        p = producers(proxy.url(), send_timeout=send_timeout)
        p.create_topic("once", queues=2)
        p.send("once", "warm")  # the script loaded, the routes cached
        proxy.drop_reply_to(b"EVALSHA")
        index_as = ("workers", "signup") if task else None
        sent = p.send_message("once", {"n": 1}, index_as=index_as)
        assert proxy.dropped == 1
        assert stored_ids(client.meta, "once", 2).count(sent.id) == 1
    finally:
        proxy.close()


def test_a_batch_whose_reply_was_lost_is_stored_once(producers, client, url):
    """send_many's reply is lost with its connection after the server stored the batch
    (three script calls of one pipeline): redis-py sends the batch again on a new
    connection, and that copy stores nothing."""
    proxy = ReplyDropper(int(url.rsplit(":", 1)[1].split("/")[0]))
    try:
        p = producers(proxy.url())
        p.create_topic("many", queues=3)
        [warm] = p.send_many("many", ["warm"])  # the script loaded: the reply lost is the batch's
        proxy.drop_reply_to(b"lost-reply")  # in the batch's bodies only
        sent = p.send_many_messages("many", [{"lost-reply": i} for i in range(1_100)])
        assert proxy.dropped == 1
        assert sorted(stored_ids(client.meta, "many", 3)) == sorted([warm, *(s.id for s in sent)])
        entries = {
            f[b"id"].decode(): entry.decode()
            for q in range(3)
            for entry, f in client.meta.xrange(QueueKeys("rmq", "many", q).stream)
        }
        assert [s.entry_id for s in sent] == [entries[s.id] for s in sent]
    finally:
        proxy.close()


@pytest.fixture
def short_socket_timeout(monkeypatch):
    """Connections made meanwhile wait 1 s for a reply (30 s by default)."""
    from redismq import urls

    options = urls.connection_options
    monkeypatch.setattr(urls, "connection_options", lambda _, *more: options(1.0, *more))


@pytest.mark.parametrize("deadline", [0, 10], ids=["no-deadline", "deadline"])
@pytest.mark.parametrize("batch", [False, True], ids=["send", "send_many"])
def test_a_send_whose_reply_is_late_is_sent_again_only_by_its_own_attempts(
    producers, client, url, short_socket_timeout, batch, deadline
):
    """The server ran the send; its reply comes later than the socket timeout. redis-py would
    send it again then, possibly after the record that makes the copy a no-op expired: it
    does not. A send without a deadline raises the timeout; within its deadline, the send
    is made again on the same broker, finds the record of the first call, and returns.
    Either way the message is stored once."""
    proxy = ReplyDropper(int(url.rsplit(":", 1)[1].split("/")[0]))
    try:
        p = producers(proxy.url(), send_timeout=deadline)
        p.create_topic("late", queues=2)
        p.send_many("late", ["warm"]) if batch else p.send("late", "warm")
        proxy.drop_reply_to(b"late-reply", hold=2.0)
        bodies = [{"late-reply": i} for i in range(3 if batch else 1)]
        try:
            ids = p.send_many("late", bodies) if batch else [p.send("late", bodies[0])]
        except BrokerUnavailable:
            assert not deadline
        else:
            assert deadline and len(ids) == len(bodies)
        assert proxy.seen == (2 if deadline else 1)  # sent twice only by the send's attempts
        assert len(stored_ids(client.meta, "late", 2)) == 1 + len(bodies)
    finally:
        proxy.close()
