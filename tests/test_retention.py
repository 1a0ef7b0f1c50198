"""Rule 7 (retention): trimming never drops what a group has not acknowledged."""

from __future__ import annotations

import time

from redismq import fetching
from redismq.keys import QueueKeys


def test_trim_keeps_everything_a_slow_group_has_not_acknowledged(client):
    client.create_topic("logs", queues=1, retention=0)
    fast = client.consumer("logs", "fast")
    slow = client.consumer("logs", "slow")
    ids = client.send_many("logs", list(range(50)))
    got_fast = fast.receive(count=100, block=0.2)
    fast.ack_many(got_fast)
    got_slow = slow.receive(count=20, block=0.2)  # 20 pending, 30 not yet delivered
    slow.ack_many(got_slow[:5])
    trimmed, dropped = client.trim("logs")
    assert (trimmed, dropped) == (5, 0)
    stream = QueueKeys("rmq", "logs", 0).stream
    kept = [f[b"id"].decode() for _, f in client.meta.xrange(stream)]
    assert kept == ids[5:]
    rest = slow.receive(count=100, block=0.2)
    slow.ack_many(got_slow[5:] + rest)
    assert sorted(m.id for m in got_slow + rest) == sorted(ids)
    assert client.trim("logs") == (45, 0)


def test_retention_keeps_recent_acknowledged_entries_for_later_groups(client):
    client.create_topic("audit", queues=1, retention=10)
    c = client.consumer("audit", "g")
    client.send_many("audit", list(range(30)))
    c.ack_many(c.receive(count=100, block=0.2))
    assert client.trim("audit") == (20, 0)
    late = client.consumer("audit", "late")
    assert [m.body for m in late.receive(count=100, block=0.2)] == list(range(20, 30))


def test_hard_cap_drops_oldest_and_counts_them(client):
    from redismq.status import topic_status

    client.create_topic("capped", queues=1, retention=0, hard_cap=10)
    client.consumer("capped", "g")
    client.send_many("capped", list(range(25)))
    assert client.trim("capped") == (0, 15)
    assert topic_status(client, "capped")["dropped"] == 15


def test_hard_cap_counts_as_dropped_only_entries_some_group_had_not_acknowledged(client):
    from redismq.status import topic_status

    client.create_topic("capped2", queues=1, retention=100, hard_cap=10)
    fast = client.consumer("capped2", "fast")
    slow = client.consumer("capped2", "slow")
    client.send_many("capped2", list(range(25)))
    fast.ack_many(fast.receive(count=100, block=0.2))
    slow.ack_many(slow.receive(count=5, block=0.2))  # 20 left that slow still needs
    # The cap removes the 15 oldest: 5 every group had acknowledged, 10 that slow needed.
    assert client.trim("capped2") == (5, 10)
    assert topic_status(client, "capped2")["dropped"] == 10
    slow.ack_many(slow.receive(count=100, block=0.2))
    client.send_many("capped2", list(range(5)))
    fast.ack_many(fast.receive(count=100, block=0.2))
    slow.ack_many(slow.receive(count=100, block=0.2))
    assert client.trim("capped2") == (5, 0)  # every group had them: nothing dropped
    assert topic_status(client, "capped2")["dropped"] == 10


def test_a_plain_consumer_keeps_its_topic_trimmed(client, monkeypatch):
    """Only `redismq worker` trimmed (a component of its own): a topic consumed with
    `client.consumer()` grew without bound, past its retention, whatever was acknowledged."""
    monkeypatch.setattr(fetching, "TRIM_EVERY", 0.05)
    client.create_topic("events", queues=2, retention=5)
    ids = client.send_many("events", [{"n": n} for n in range(40)])
    consumer = client.consumer("events", "mail")
    got: list[str] = []
    while len(got) < 40:
        batch = consumer.receive(count=10, block=0.2)
        consumer.ack_many(batch)
        got += [m.id for m in batch]
    time.sleep(0.1)
    assert consumer.receive(count=10, block=0.1) == []
    assert sorted(got) == sorted(ids)
    lengths = [client.meta.xlen(QueueKeys("rmq", "events", q).stream) for q in range(2)]
    assert lengths == [5, 5]
    consumer.close()
