"""Rule 6 (order): ordered groups lease each queue to one consumer and keep its order."""

from __future__ import annotations

import signal

from redismq import App
from redismq.processing import BatchRunner
from tests.conftest import wait_for


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


def test_new_holder_takes_what_the_old_one_left_pending_first(client):
    client.create_topic("orders", queues=1)
    first = client.consumer("orders", "ledger", ordered=True, visibility_timeout=2)
    first.rebalance()
    for i in range(5):
        client.send("orders", {"seq": i}, key="k")
    got = first.receive(count=2, block=0.2)
    assert [m.body["seq"] for m in got] == [0, 1]
    first.close()  # leaves 0 and 1 pending: they were fetched, not finished
    second = client.consumer("orders", "ledger", ordered=True, visibility_timeout=2)
    second.rebalance()
    seqs = []
    while len(seqs) < 5:
        batch = second.receive(count=10, block=0.2)
        second.ack_many(batch)
        seqs += [m.body["seq"] for m in batch]
    assert seqs == [0, 1, 2, 3, 4]


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
