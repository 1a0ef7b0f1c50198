"""Settling outcomes on a real server: only the owner settles (rule 13), one bad result
fails alone, results land in their own job, and pruning follows the server's clock."""

from __future__ import annotations

import logging
import time

from redismq.consumer import CANCELLED


def test_ack_many_mixing_cancelled_and_results_writes_each_result_to_its_own_job(client, app):
    @app.task(topic="mixed")
    def work(n):
        return n

    client.create_topic("mixed", queues=1)
    jobs = [work.send(n) for n in range(4)]
    consumer = client.consumer("mixed", work.group)
    got = sorted(consumer.receive(count=10, block=1), key=lambda m: m.body["args"][0])
    assert len(got) == 4
    consumer.ack_many(got, [CANCELLED, "one", CANCELLED, "three"])
    assert jobs[1].result(timeout=1) == "one"
    assert jobs[3].result(timeout=1) == "three"
    assert client.meta.xpending(jobs[0].keys.stream, work.group)["pending"] == 0


def test_a_consumer_whose_lease_was_taken_over_settles_nothing(client, app, caplog):
    @app.task(topic="owned")
    def work(n):
        return n

    client.create_topic("owned", queues=1)
    jobs = [work.send(n) for n in range(4)]
    keys = jobs[0].keys
    group = work.group
    a = client.consumer("owned", group, name="a", visibility_timeout=0.2)
    b = client.consumer("owned", group, name="b", visibility_timeout=0.2)
    mine = sorted(a.receive(count=10, block=1), key=lambda m: m.body["args"][0])
    assert len(mine) == 4
    time.sleep(0.3)  # a's leases expire
    taken = b.receive(count=10, block=1)
    assert sorted(m.id for m in taken) == sorted(m.id for m in mine)

    caplog.set_level(logging.WARNING, "redismq.consumer")
    assert a.ack_many(mine[:1], [0]) == 0
    assert a.retry(mine[1], "ValueError: late", delay=0) == "lost"
    assert a.dead_letter(mine[2], "late") is False
    a.release(mine[3:])
    a.ack_many(mine[:1], [0])  # learned once already: no second warning

    pending = client.meta.xpending_range(keys.stream, group, "-", "+", 10)
    assert sorted(p["consumer"] for p in pending) == [b"b"] * 4
    assert client.meta.zcard(keys.done(group)) == 0
    assert client.meta.zcard(keys.retry(group)) == 0
    assert client.meta.xlen(keys.retry_stream(group)) == 0
    assert client.meta.xlen(keys.dead(group)) == 0
    assert client.meta.exists(keys.outcome(jobs[0].id)) == 0
    warnings = [r.getMessage() for r in caplog.records if "lease lost" in r.getMessage()]
    assert len(warnings) == 4
    assert all(any(m.id in w for w in warnings) for m in mine)

    assert b.ack_many(taken, [m.body["args"][0] for m in taken]) == 4
    assert [j.result(timeout=1) for j in jobs] == [0, 1, 2, 3]
    assert client.meta.xpending(keys.stream, group)["pending"] == 0


def test_a_runner_does_not_start_messages_whose_lease_it_learned_was_lost(client, app):
    from redismq.processing import BatchRunner

    runs = []

    @app.consumer("taken", group="g")
    def handle(msg):
        runs.append(msg.id)

    client.create_topic("taken", queues=1)
    client.send_many("taken", [1, 2])
    a = client.consumer("taken", "g", name="a", visibility_timeout=0.2)
    b = client.consumer("taken", "g", name="b", visibility_timeout=0.2)
    mine = a.receive(count=10, block=1)
    time.sleep(0.3)
    assert len(b.receive(count=10, block=1)) == 2
    a.lease_lost(a.renew(mine))  # what the worker's lease keeper does
    counts = BatchRunner(a, app.subscriptions[("taken", "g")]).run(mine)
    assert runs == []
    assert (counts.lost, counts.processed) == (2, 0)
    assert client.meta.xpending("rmq:{taken#0}:stream", "g")["pending"] == 2


def test_a_message_received_again_after_its_lease_was_lost_is_owned_again(client):
    client.create_topic("back", queues=1)
    client.send("back", 1)
    a = client.consumer("back", "g", name="a", visibility_timeout=0.2)
    b = client.consumer("back", "g", name="b", visibility_timeout=0.2)
    [first] = a.receive(count=10, block=1)
    time.sleep(0.3)
    assert len(b.receive(count=10, block=1)) == 1
    a.lease_lost(a.renew([first]))
    assert a.is_lost(first)
    time.sleep(0.3)  # b stalls in turn: a takes the message back
    [again] = a.receive(count=10, block=1)
    assert not a.is_lost(again)
    assert a.ack_many([again]) == 1
