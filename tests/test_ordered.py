"""Rule 6 (order): ordered groups lease each queue to one consumer and keep its order."""

from __future__ import annotations

import signal
import subprocess
import time

import pytest

from redismq import App, BrokerUnavailable, Client
from redismq.brokers import add_broker
from redismq.processing import BatchRunner
from redismq.routing import queue_for_key
from tests.conftest import wait_for
from tests.sentinels import Servers


def test_queues_are_shared_evenly_and_taken_over_when_a_consumer_leaves(client):
    client.create_topic("orders", queues=4)
    a = client.consumer("orders", "ledger", ordered=True, visibility_timeout=2)
    b = client.consumer("orders", "ledger", ordered=True, visibility_timeout=2)
    a.rebalance()
    assert a.leased == {0, 1, 2, 3}
    b.rebalance()
    a.rebalance()  # a marks two leases to give back; it gives them back between batches
    a.receive(count=10, block=0.01)
    b.rebalance()
    assert len(a.leased) == 2 and len(b.leased) == 2 and not a.leased & b.leased
    a.close()
    b.rebalance()
    assert b.leased == {0, 1, 2, 3}


def _holder(client, sends: int = 0):
    """An ordered consumer of a one-queue topic holding its queue, after `sends` keyed
    sends (seq 0, 1, …)."""
    client.create_topic("orders", queues=1)
    holder = client.consumer("orders", "ledger", ordered=True, visibility_timeout=2)
    holder.rebalance()
    for i in range(sends):
        client.send("orders", {"seq": i}, key="k")
    return holder


def _seqs(consumer, total: int, count: int) -> list[int]:
    """The seqs of `total` messages received `count` at a time, each batch acknowledged."""
    seqs: list[int] = []
    while len(seqs) < total:
        batch = consumer.receive(count=count, block=0.2)
        consumer.ack_many(batch)
        seqs += [m.body["seq"] for m in batch]
    return seqs


def test_new_holder_takes_what_the_old_one_left_pending_first(client):
    first = _holder(client, sends=5)
    got = first.receive(count=2, block=0.2)
    assert [m.body["seq"] for m in got] == [0, 1]
    first.release(got)  # stopping before starting them: 0 and 1 stay pending
    first.close()
    second = client.consumer("orders", "ledger", ordered=True, visibility_timeout=2)
    second.rebalance()
    assert _seqs(second, 5, count=10) == [0, 1, 2, 3, 4]


def test_what_a_batch_kept_runs_again_before_anything_newer_of_its_queue(client):
    """A runner whose broker was lost mid-batch keeps what did not finish (`keep`) for
    the next receive: an ordered consumer used to read newer messages of the queue first
    and serve the kept, older ones after them."""
    consumer = _holder(client, sends=6)
    got = consumer.receive(count=3, block=0.2)
    assert [m.body["seq"] for m in got] == [0, 1, 2]
    consumer.ack_many(got[:1])
    consumer.keep(got[1:])  # 0 ran; the broker was lost before 1 and 2 did
    assert _seqs(consumer, 5, count=2) == [1, 2, 3, 4, 5]
    consumer.close()


def test_failing_message_holds_its_queue_until_it_succeeds(client):
    app = App(client)
    order = []

    @app.consumer("orders", group="ledger", ordered=True, max_retries=3, backoff=0.01)
    def apply(msg):
        if msg.body.get("fail_first") and msg.attempt < 2:
            raise RuntimeError("not yet")
        order.append(msg.body["seq"])

    client.create_topic("orders", queues=1)
    client.send("orders", {"seq": 0}, key="k")
    client.send("orders", {"seq": 1, "fail_first": True}, key="k")
    client.send("orders", {"seq": 2}, key="k")
    consumer = client.consumer("orders", "ledger", ordered=True)
    consumer.rebalance()
    runner = BatchRunner(consumer, app.subscriptions[("orders", "ledger")])
    while len(order) < 3:
        runner.run(consumer.receive(count=10, block=0.2))
    assert order == [0, 1, 2]
    assert client.dead_letters("orders", "ledger") == []


def test_per_key_order_holds_with_four_workers(client, url, processes):
    client.create_topic("orders", queues=8)
    keys = [f"k{i}" for i in range(50)]
    per_key = 200
    workers = [
        processes.start(
            "worker",
            "tests.apps.ordered_app:app",
            "--url",
            url,
            "--processes",
            "1",
            "--concurrency",
            "2",
            "--visibility-timeout",
            "3",
            "--log-level",
            "WARNING",
            stdout=subprocess.DEVNULL,  # nobody reads it: a full pipe would block the worker
        )
        for _ in range(4)
    ]
    for seq in range(per_key):
        batch = [{"key": k, "seq": seq, "fail_first": seq % 50 == 7} for k in keys]
        for body in batch:
            client.send("orders", body, key=body["key"])
    total = len(keys) * per_key
    assert wait_for(lambda: sum(client.meta.llen(f"seen:{k}") for k in keys) >= total, timeout=240)
    for k in keys:
        seen = [int(s) for s in client.meta.lrange(f"seen:{k}", 0, -1)]
        assert seen == list(range(per_key)), f"order broken for {k}"
    for w in workers:
        w.send_signal(signal.SIGTERM)
    assert all(w.wait(30) == 0 for w in workers)


def _drain(consumers, runs, total=None, *, rounds=200):
    """Rounds in which every consumer rebalances and receives a small batch, then all the
    batches run (as they would at once in a pool), recording `(key, seq)` per run, until
    `total` distinct messages ran (without a total: `rounds` rounds)."""
    for _ in range(rounds):
        batches = []
        for c in consumers:
            c.rebalance()
            batches.append((c, c.receive(count=3, block=0.01)))
        for c, batch in batches:
            runs += [(m.body["key"], m.body["seq"]) for m in batch]
            c.ack_many(batch)
        if total is not None and len(set(runs)) >= total:
            return
    if total is None:
        return
    raise AssertionError(f"only {len(set(runs))} of {total} ran")


def test_growing_pool_hands_a_queue_over_only_after_its_fetched_messages_settled(client):
    client.create_topic("orders", queues=2)
    keys = [k for k in (f"k{i}" for i in range(40)) if queue_for_key(k, 2) == 1][:6]
    for seq in range(4):
        for k in keys:
            client.send("orders", {"key": k, "seq": seq}, key=k)
    # An earlier holder fetched everything and handed it over unstarted: the next holder
    # takes it all over at once, so it holds queue 1's messages fetched and unrun.
    old = client.consumer("orders", "ledger", ordered=True, visibility_timeout=5)
    old.rebalance()
    old.release(old.receive(count=100, block=0.2))
    old.close()
    a = client.consumer("orders", "ledger", ordered=True, visibility_timeout=5)
    a.rebalance()
    assert a.leased == {0, 1}
    running = a.receive(count=3, block=0.01)  # queue 1's first messages, running
    b = client.consumer("orders", "ledger", ordered=True, visibility_timeout=5)
    b.rebalance()
    a.rebalance()  # the fair share drops to one queue: a has queue 1 to give back
    runs: list[tuple[str, int]] = []
    _drain([a, b], runs, rounds=3)
    runs[:0] = [(m.body["key"], m.body["seq"]) for m in running]
    a.ack_many(running)
    _drain([a, b], runs, len(keys) * 4)
    assert len(runs) == len(set(runs)), "a message ran twice"
    for k in keys:
        assert [s for key, s in runs if key == k] == [0, 1, 2, 3], f"order broken for {k}"
    _drain([a, b], runs, len(keys) * 4)
    assert len(a.leased) == 1 and len(b.leased) == 1, "the queue was never handed over"


def test_replayed_dead_letter_of_an_ordered_group_runs(client):
    app = App(client)
    ran = []

    @app.consumer("orders", group="ledger", ordered=True, max_retries=0)
    def apply(msg):
        if msg.body["seq"] == 1 and "failed" not in ran:
            ran.append("failed")
            raise RuntimeError("first run fails")
        ran.append(msg.body["seq"])

    client.create_topic("orders", queues=1)
    for seq in range(3):
        client.send("orders", {"seq": seq}, key="k")
    sub = app.subscriptions[("orders", "ledger")]
    consumer = client.consumer("orders", "ledger", ordered=True, max_retries=0)
    consumer.rebalance()
    runner = BatchRunner(consumer, sub)
    assert wait_for(lambda: runner.run(consumer.receive(count=10, block=0.1)) and len(ran) >= 3)
    assert ran == [0, "failed", 2]
    assert len(client.dead_letters("orders", "ledger")) == 1
    assert client.replay_dead_letters("orders", "ledger") == 1
    client.send("orders", {"seq": 3}, key="k")
    assert wait_for(
        lambda: runner.run(consumer.receive(count=10, block=0.1)) and consumer.backlog() == 0,
        timeout=5,
    ), "the replayed message was never delivered"
    assert ran == [0, "failed", 2, 1, 3]
    assert client.dead_letters("orders", "ledger") == []


def test_graceful_handovers_of_an_unstarted_message_are_not_attempts(client):
    app = App(client)
    ran = []

    @app.consumer("orders", group="ledger", ordered=True, max_retries=2)
    def apply(msg):
        ran.append((msg.body["seq"], msg.attempt))

    client.create_topic("orders", queues=1)
    client.send("orders", {"seq": 0}, key="k")
    sub = app.subscriptions[("orders", "ledger")]
    for _ in range(5):  # each holder fetches it and stops before starting it
        holder = client.consumer("orders", "ledger", ordered=True, max_retries=2)
        holder.rebalance()
        got = holder.receive(count=10, block=0.2)
        assert len(got) == 1
        counts = BatchRunner(holder, sub).run(got, stop=lambda: True)
        assert counts.released == 1
        holder.close()
    last = client.consumer("orders", "ledger", ordered=True, max_retries=2)
    last.rebalance()
    BatchRunner(last, sub).run(last.receive(count=10, block=0.2))
    assert client.dead_letters("orders", "ledger") == []
    assert ran == [(0, 0)]


def test_a_fetched_message_taken_elsewhere_does_not_keep_its_queue(client):
    client.create_topic("orders", queues=2)
    key = next(k for k in (f"k{i}" for i in range(40)) if queue_for_key(k, 2) == 1)
    client.send("orders", {"seq": 0}, key=key)
    a = client.consumer("orders", "ledger", ordered=True, visibility_timeout=5)
    a.rebalance()
    [msg] = a.receive(count=10, block=0.2)
    # Dropped without an outcome here: another consumer took it over (its step was lost).
    stream = client.router.queue_keys("orders", 1).stream
    client.meta.xclaim(stream, "ledger", "someone-else", 0, [msg.entry_id])
    b = client.consumer("orders", "ledger", ordered=True, visibility_timeout=5)
    b.rebalance()
    a.rebalance()
    a.receive(count=10, block=0.01)
    b.rebalance()
    assert a.leased == {0} and b.leased == {1}


def test_a_holder_stalled_past_its_lease_settles_nothing_its_successor_took_over(client):
    """The next holder of a queue takes over what the last one had fetched; the last one,
    back from a stall, finds it no longer its own (rule 13) and acknowledges nothing."""
    client.create_topic("orders", queues=1)
    for i in range(3):
        client.send("orders", {"seq": i}, key="k")
    a = client.consumer("orders", "ledger", ordered=True, visibility_timeout=0.3)
    a.rebalance()
    mine = a.receive(count=10, block=0.2)
    assert [m.body["seq"] for m in mine] == [0, 1, 2]
    b = client.consumer("orders", "ledger", ordered=True, visibility_timeout=0.3)
    assert wait_for(lambda: b.rebalance() or b.leased == {0}, timeout=5)  # a's lease ran out
    taken = b.receive(count=10, block=0.2)
    assert [m.body["seq"] for m in taken] == [0, 1, 2]

    assert a.ack_many(mine) == 0
    stream = client.router.queue_keys("orders", 0).stream
    pending = client.meta.xpending_range(stream, "ledger", "-", "+", 10)
    assert [p["consumer"] for p in pending] == [b.name.encode()] * 3
    assert b.ack_many(taken) == 3
    assert client.meta.xpending(stream, "ledger")["pending"] == 0


def test_a_holder_that_reads_while_its_successor_takes_over_settles_nothing_taken(
    client, monkeypatch
):
    """A last holder that has not learned yet that its lease lapsed reads just before the
    next holder claims what is pending (XAUTOCLAIM, any idle time): what it read is taken
    over, and its settle finds the entries its successor's (rule 13). (The claim counts in
    its own transaction; counted a round trip before, a read in between took the moved
    count and then settled its successor's entries: that race is gone with the round trip,
    so this test reads before the claim, not between.)"""
    client.create_topic("orders", queues=1)
    a = client.consumer("orders", "ledger", ordered=True, visibility_timeout=0.3)
    a.rebalance()
    assert a.leased == {0}
    for i in range(3):
        client.send("orders", {"seq": i}, key="k")
    b = client.consumer("orders", "ledger", ordered=True, visibility_timeout=0.3)
    real = b._counted
    mine: list = []

    def a_reads_first(q, claim):
        """`a` (another process in life) reads right before b's counted claim."""
        if not mine:
            mine.extend(a.receive(count=10, block=None))
        return real(q, claim)

    monkeypatch.setattr(b, "_counted", a_reads_first)
    assert wait_for(lambda: b.rebalance() or b.leased == {0}, timeout=5)  # a's lease ran out
    monkeypatch.setattr(b, "_counted", real)
    assert [m.body["seq"] for m in mine] == [0, 1, 2]
    taken = b.receive(count=10, block=0.2)
    assert [m.body["seq"] for m in taken] == [0, 1, 2]
    stream = client.router.queue_keys("orders", 0).stream
    pending = client.meta.xpending_range(stream, "ledger", "-", "+", 10)
    assert [p["consumer"] for p in pending] == [b.name.encode()] * 3  # b's now

    assert a.ack_many(mine) == 0  # not a's to settle
    pending = client.meta.xpending_range(stream, "ledger", "-", "+", 10)
    assert [p["consumer"] for p in pending] == [b.name.encode()] * 3
    assert b.ack_many(taken) == 3


def test_a_holder_renews_its_leases_while_the_meta_redis_is_down():
    """The leases of an ordered group live on the queues' brokers; which consumers share
    them is counted in the meta Redis. With the meta Redis down, `rebalance` made no call:
    the leases lapsed after the visibility timeout although their holder and brokers were
    fine, and once the meta came back another consumer took the queues over while their
    jobs still ran (twice, out of order). Real servers: a meta and a broker."""
    servers = Servers()
    try:
        meta, broker = servers.start(), servers.start()
        client = Client(meta.url)
        add_broker(client, "b0", broker.url)
        client.create_topic("ledger", queues=2)
        holder = client.consumer("ledger", "books", ordered=True, visibility_timeout=2)
        holder.rebalance()
        assert holder.leased == {0, 1}
        on_broker = broker.client()

        def ttls() -> list[int]:
            return [on_broker.pttl(holder.queues[q].keys.lease("books")) for q in (0, 1)]

        time.sleep(0.6)
        meta.stop()
        started = time.monotonic()
        with pytest.raises(BrokerUnavailable):
            holder.rebalance()
        took_ms = (time.monotonic() - started) * 1000
        # renewed to 2 s during the call (the meta's connection takes a while to fail);
        # unrenewed they would be 0.6 s shorter still
        assert all(ttl >= 2000 - took_ms - 200 for ttl in ttls()), (ttls(), took_ms)
        assert holder.leased == {0, 1}
        on_broker.close()
        client.close()
    finally:
        servers.stop_all()
