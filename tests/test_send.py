"""Rule 1 (send) and rule 2 (placement), against a real server."""

from __future__ import annotations

import time

import pytest

from redismq import Client, InvalidMessage, TopicNotFound
from redismq.keys import QueueKeys
from redismq.routing import queue_for_key


def stream_len(client: Client, topic: str, queue: int) -> int:
    return client.meta.xlen(QueueKeys("rmq", topic, queue).stream)


def test_send_returns_id_after_the_entry_is_in_the_stream(client):
    client.create_topic("emails", queues=4)
    mid = client.send("emails", {"to": "a@b.c"})
    entries = [
        e for q in range(4) for _, e in client.meta.xrange(QueueKeys("rmq", "emails", q).stream)
    ]
    assert [e[b"id"].decode() for e in entries] == [mid]


def test_same_key_goes_to_the_same_queue_in_order(client):
    client.create_topic("orders", queues=8)
    for i in range(20):
        client.send("orders", {"n": i}, key="customer-42")
    queue = queue_for_key("customer-42", 8)
    stream = QueueKeys("rmq", "orders", queue).stream
    assert [int(f[b"body"][5:-1]) for _, f in client.meta.xrange(stream)] == list(range(20))
    assert sum(stream_len(client, "orders", q) for q in range(8)) == 20


def test_without_key_messages_spread_round_robin(client):
    client.create_topic("spread", queues=4)
    client.send_many("spread", [{"n": i} for i in range(40)])
    assert [stream_len(client, "spread", q) for q in range(4)] == [10, 10, 10, 10]


def test_dedup_key_resend_returns_first_id_and_adds_nothing(client):
    first = client.send("signup", {"user": 1}, dedup_key="user-1")
    again = client.send("signup", {"user": 1}, dedup_key="user-1")
    other = client.send("signup", {"user": 2}, dedup_key="user-2")
    assert again == first != other
    assert sum(stream_len(client, "signup", q) for q in range(4)) == 2


def test_delayed_message_is_visible_at_or_after_its_due_time(client):
    c = client.consumer("later", "g", create=True)
    sent_at = time.time()
    mid = client.send("later", {"x": 1}, delay=0.5)
    assert c.receive(count=10, block=0.1) == []
    got = []
    deadline = time.time() + 5
    while not got and time.time() < deadline:
        got = c.receive(count=10, block=0.2)
    assert [m.id for m in got] == [mid]
    assert time.time() - sent_at >= 0.5


def test_send_many_returns_ids_in_order_and_keeps_bodies(client):
    ids = client.send_many("bulk", [{"n": i} for i in range(250)])
    assert len(set(ids)) == 250
    c = client.consumer("bulk", "g")
    got = {}
    while len(got) < 250:
        batch = c.receive(count=100, block=0.5)
        assert batch
        got.update({m.id: m.body["n"] for m in batch})
        c.ack_many(batch)
    assert [got[i] for i in ids] == list(range(250))


def test_topic_is_created_on_first_send_unless_disabled(url):
    assert Client(url).send("fresh", {"a": 1})
    strict = Client(url, auto_create_topics=False)
    with pytest.raises(TopicNotFound, match="redismq topic create other"):
        strict.send("other", {"a": 1})


def test_create_topic_is_idempotent(client):
    assert client.create_topic("t", queues=3).queues == 3
    assert client.create_topic("t", queues=3).queues == 3


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"body": object()}, "not JSON-serialisable"),
        ({"body": "x" * (1024 * 1024 + 1)}, "over the limit"),
        ({"body": 1, "delay": -1}, "must not be negative"),
        ({"body": 1, "delay": "soon"}, "number of seconds"),
    ],
)
def test_bad_sends_fail_clearly_and_send_nothing(client, kwargs, match):
    client.create_topic("bad", queues=1)
    with pytest.raises(InvalidMessage, match=match):
        client.send("bad", **kwargs)
    assert stream_len(client, "bad", 0) == 0
