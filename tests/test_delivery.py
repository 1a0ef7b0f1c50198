"""Rule 3 (delivery): groups, one consumer at a time, leases, takeover."""

from __future__ import annotations

import time

import pytest

from redismq import TopicNotFound


def drain(consumer, expected: int, timeout: float = 10.0):
    got = []
    deadline = time.monotonic() + timeout
    while len(got) < expected and time.monotonic() < deadline:
        batch = consumer.receive(count=100, block=0.2)
        consumer.ack_many(batch)
        got += batch
    return got


def test_every_group_gets_every_message(client):
    client.create_topic("events", queues=3)
    ids = client.send_many("events", list(range(30)))
    a = client.consumer("events", "mailer")
    b = client.consumer("events", "analytics")
    assert sorted(m.id for m in drain(a, 30)) == sorted(ids)
    assert sorted(m.id for m in drain(b, 30)) == sorted(ids)


def test_inside_a_group_each_message_goes_to_one_consumer(client):
    client.create_topic("work", queues=2)
    ids = client.send_many("work", list(range(100)))
    c1 = client.consumer("work", "g")
    c2 = client.consumer("work", "g")
    first = c1.receive(count=30, block=0.2)
    second = c2.receive(count=200, block=0.2)
    assert not {m.id for m in first} & {m.id for m in second}
    c1.ack_many(first)
    c2.ack_many(second)
    rest = drain(c1, 100 - len(first) - len(second))
    assert sorted(m.id for m in first + second + rest) == sorted(ids)


def test_group_created_later_gets_messages_sent_before(client):
    client.create_topic("history", queues=2)
    ids = client.send_many("history", list(range(10)))
    late = client.consumer("history", "late-group")
    assert sorted(m.id for m in drain(late, 10)) == sorted(ids)


def test_unacknowledged_message_is_taken_over_after_visibility_timeout(client):
    client.create_topic("vt", queues=1)
    mid = client.send("vt", {"x": 1})
    dead = client.consumer("vt", "g", visibility_timeout=0.5)
    assert [m.id for m in dead.receive(count=10, block=0.2)] == [mid]
    other = client.consumer("vt", "g", visibility_timeout=0.5)
    assert other.receive(count=10, block=0.1) == []
    time.sleep(0.6)
    taken = drain(other, 1, timeout=3)
    assert [m.id for m in taken] == [mid]


def test_renewed_lease_is_not_taken_over(client):
    client.create_topic("long", queues=1)
    client.send("long", {"x": 1})
    holder = client.consumer("long", "g", visibility_timeout=0.5)
    held = holder.receive(count=10, block=0.2)
    other = client.consumer("long", "g", visibility_timeout=0.5)
    for _ in range(8):
        time.sleep(0.2)
        assert holder.renew(held) == []
        assert other.receive(count=10, block=0.05) == []
    holder.ack_many(held)


def test_renew_reports_a_lease_lost_to_another_consumer(client):
    client.create_topic("lost", queues=1)
    client.send("lost", {"x": 1})
    slow = client.consumer("lost", "g", visibility_timeout=0.2)
    held = slow.receive(count=10, block=0.2)
    time.sleep(0.3)
    thief = client.consumer("lost", "g", visibility_timeout=0.2)
    assert drain(thief, 1, timeout=3)
    assert [m.id for m in slow.renew(held)] == [held[0].id]


def test_released_message_is_available_to_another_consumer_at_once(client):
    client.create_topic("handback", queues=1)
    mid = client.send("handback", {"x": 1})
    leaving = client.consumer("handback", "g", visibility_timeout=60)
    got = leaving.receive(count=10, block=0.2)
    leaving.release(got)
    other = client.consumer("handback", "g", visibility_timeout=60)
    assert [m.id for m in other.receive(count=10, block=0.5)] == [mid]


def test_consumer_of_unknown_topic_is_a_clear_error(client):
    with pytest.raises(TopicNotFound, match="'nope' does not exist"):
        client.consumer("nope", "g")


def test_message_that_keeps_killing_its_worker_is_dead_lettered(client):
    client.create_topic("poison", queues=1)
    mid = client.send("poison", {"x": 1})
    for _ in range(3):  # three consumers take it and die without an outcome
        doomed = client.consumer("poison", "g", visibility_timeout=0.1, max_retries=2)
        assert wait_for_one(doomed, mid)
        time.sleep(0.15)
    last = client.consumer("poison", "g", visibility_timeout=0.1, max_retries=2)
    time.sleep(0.15)
    for _ in range(10):  # taken over at its second look, and dead-lettered, not returned
        assert last.receive(count=10, block=0.1) == []
    [dead] = client.dead_letters("poison", "g")
    assert dead.id == mid and "without an outcome" in dead.reason


def wait_for_one(consumer, mid: str) -> bool:
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        got = consumer.receive(count=10, block=0.1)
        if got:
            return [m.id for m in got] == [mid]
    return False
