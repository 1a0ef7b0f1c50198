"""Topology changes that keep their state: expand, drain and remove, the route cache."""

from __future__ import annotations

from redismq import Client
from redismq.brokers import expand_topic
from redismq.routing import queue_for_key


def test_a_resend_after_an_expand_finds_the_first_message(client: Client):
    client.create_topic("signup", 2)
    keys = [f"user-{i}" for i in range(20)]
    first = {k: client.send("signup", {"k": k}, dedup_key=k) for k in keys}
    expand_topic(client, "signup", 7)
    assert {k: client.send("signup", {"k": k}, dedup_key=k) for k in keys} == first
    # a keyed message with a dedup key too
    keyed = client.send("signup", {"x": 1}, key="customer-1", dedup_key="order-1")
    expand_topic(client, "signup", 13)
    assert client.send("signup", {"x": 1}, key="customer-1", dedup_key="order-1") == keyed
    other = Client(client.url)  # a client that never saw the topic before the expand
    assert other.send("signup", {"k": "user-3"}, dedup_key="user-3") == first["user-3"]
    other.close()


def test_trimming_keeps_entries_a_registered_group_has_not_seen_on_a_new_queue(client):
    client.create_topic("audit", 1, retention=5)
    consumer = client.consumer("audit", "g")  # registers g; its group exists on queue 0 only
    expand_topic(client, "audit", 2)
    key = next(k for k in map(str, range(100)) if queue_for_key(k, 2) == 1)
    for i in range(40):
        client.send("audit", {"n": i}, key=key)
    client.trim("audit")
    stream = client.router.queue_keys("audit", 1).stream
    assert client.meta.xlen(stream) == 40
    consumer.close()
    later = client.consumer("audit", "g", queues=[1])
    assert len(later.receive(100, block=0.1)) == 40


def test_trimming_keeps_entries_of_a_group_registered_while_its_workers_were_down(client):
    client.create_topic("audit2", 1, retention=5)
    client.router.add_group("audit2", "mailer")  # as `redismq group`/an app registers it
    client.send_many("audit2", [{"n": i} for i in range(30)])
    client.trim("audit2")
    assert client.meta.xlen(client.router.queue_keys("audit2", 0).stream) == 30


def test_the_route_cache_never_keeps_a_topic_read_before_a_version_bump():
    from redismq.route_cache import RouteCache
    from redismq.routing import Topic

    cache = RouteCache()
    a = Topic("a", 2, 0, 0, placement=["x", "x"])
    b = Topic("b", 2, 0, 0, placement=["x", "x"])
    cache.put(a, b"1")
    cache.put(b, b"2")  # read after a change: `a` may be what changed
    assert cache.get("a") is None and cache.get("b") is b
    cache.put(a, b"1")  # a late read from before the change is not kept
    assert cache.get("a") is None
    cache.seen(b"3")
    assert cache.get("b") is None


def test_a_client_sees_an_expand_made_through_another_client(client, url):
    other = Client(url)
    client.create_topic("wide", 2)
    client.create_topic("other", 2)
    assert client.topic("wide").queues == 2
    expand_topic(other, "wide", 5)
    other.create_topic("third", 1)  # bumps the version again
    client.topic("third")
    assert client.topic("wide").queues == 5
    other.close()


def test_drain_then_remove_at_once_keeps_what_the_queues_kept(client, url):
    """`redismq broker drain b1 && redismq broker remove b1`: the removal waits for the
    drain to settle instead of refusing, and the moved queues' dead letters, done records,
    dedup records and job results stay readable on their new broker."""
    from redismq.brokers import add_broker, drain_broker, list_brokers, remove_broker
    from redismq.server import LocalServer

    with LocalServer() as b0, LocalServer() as b1:
        add_broker(client, "b0", b0.url)
        add_broker(client, "b1", b1.url)
        t = client.create_topic("jobs", 4)
        gone = t.placement[0]
        moved = [q for q, b in enumerate(t.placement) if b == gone]
        key = next(k for k in map(str, range(200)) if queue_for_key(k, 4) == moved[0])
        first = client.send("jobs", {"n": 1}, key=key, dedup_key="once")
        done_id = client.send("jobs", {"n": 2}, key=key)
        dead_id = client.send("jobs", {"n": 3}, key=key)
        consumer = client.consumer("jobs", "g", queues=moved)
        got = {m.id: m for m in consumer.receive(10, block=0.2)}
        consumer.ack(got[first], {"answer": 42})
        consumer.ack(got[done_id])
        consumer.dead_letter(got[dead_id], "broken")

        drain_broker(client, gone)
        remove_broker(client, gone)  # at once: waits out the settle time

        assert gone not in {b.name for b in list_brokers(client)}
        fresh = Client(url)
        assert gone not in fresh.topic("jobs").placement
        assert [d.id for d in fresh.dead_letters("jobs", "g")] == [dead_id]
        assert fresh.send("jobs", {"n": 1}, key=key, dedup_key="once") == first
        k = fresh.router.queue_keys("jobs", moved[0])
        home = fresh.router.queue_broker(fresh.topic("jobs"), moved[0]).redis
        assert home.zscore(k.done("g"), done_id) is not None
        assert home.exists(k.outcome(first))
        # the group's position moved too: nothing already settled comes back
        assert fresh.consumer("jobs", "g", queues=moved).receive(10, block=0.2) == []
        fresh.close()


def test_a_broker_registered_again_under_its_name_gets_a_new_connection(client, url):
    from redismq.brokers import add_broker, drain_broker, remove_broker
    from redismq.server import LocalServer

    with LocalServer() as first, LocalServer() as second, LocalServer() as keep:
        add_broker(client, "keep", keep.url)
        add_broker(client, "b", first.url)
        producer = Client(url)
        assert producer.router.broker("b").url == first.url  # a connection cached
        drain_broker(client, "b")
        remove_broker(client, "b")
        add_broker(client, "b", second.url)
        producer.router.states()  # the next state refresh (every REFRESH_INTERVAL)
        assert producer.router.broker("b").url == second.url
        producer.close()
