"""Fault test: a worker SIGKILLed in the middle of 2,000 tasks loses nothing.

A second worker takes over the dead one's messages after the visibility timeout and finishes
the run. Every task completes exactly once per group (one done record each); a side effect
repeats only for tasks the dead worker held (fetched, maybe run, not yet acknowledged).
"""

from __future__ import annotations

import signal
import time
from collections import Counter

import pytest
from apps import sideeffects
from apps.fault_app import ASYNC_TASK, ASYNC_TOPIC, TASK, TOPIC
from conftest import wait_for

from redismq import Client
from redismq.process import host_id
from redismq.status import topic_status

pytestmark = pytest.mark.fault

TASKS = 2_000
GROUP = "workers"
BATCH = 100  # a fetch loop takes at most this many messages at a time (count=100)
APP = "tests.apps.fault_app:app"


def held_by(client: Client, topic: str, group: str, pid: int) -> dict[str, str]:
    """Messages pending at the consumers of process `pid`: message id -> consumer name.

    Entry ids are per stream (two queues can hold the same one), so each pending entry is
    looked up by the message id it carries.
    """
    prefix = f"{host_id()}:{pid}:"
    t = client.topic(topic, create=False)
    held: dict[str, str] = {}
    for q in range(t.queues):
        keys = client.router.queue_keys(topic, q)
        r = client.router.queue_broker(t, q).redis
        for stream in (keys.stream, keys.retry_stream(group)):
            for p in r.xpending_range(stream, group, "-", "+", TASKS):
                consumer = p["consumer"].decode()
                if consumer.startswith(prefix):
                    [(_, fields)] = r.xrange(stream, p["message_id"], p["message_id"])
                    held[fields[b"id"].decode()] = consumer
    return held


def done_ids(client: Client, topic: str, group: str) -> list[str]:
    """Every message id in the group's done records, over all queues."""
    t = client.topic(topic, create=False)
    ids: list[str] = []
    for q in range(t.queues):
        r = client.router.queue_broker(t, q).redis
        ids += [m.decode() for m in r.zrange(client.router.queue_keys(topic, q).done(group), 0, -1)]
    return ids


@pytest.mark.parametrize(
    ("topic", "task"), [(TOPIC, TASK), (ASYNC_TOPIC, ASYNC_TASK)], ids=["sync", "async"]
)
def test_sigkilled_worker_loses_nothing_and_repeats_only_what_it_held(
    client, url, processes, tmp_path, topic, task
):
    """Sync tasks run on a thread per slot; async ones side by side on one event loop."""
    db = tmp_path / "side-effects.db"
    sideeffects.connect(db).close()
    env = {"REDISMQ_TEST_DB": str(db)}
    worker = ("worker", APP, "--url", url, "--processes", "1", "--visibility-timeout", "1")
    worker += ("--topic", topic)

    client.create_topic(topic, queues=4)
    sent = client.send_many_messages(
        topic, [{"task": task, "args": [i], "kwargs": {}} for i in range(TASKS)]
    )
    task_of_message = {s.id: i for i, s in enumerate(sent)}

    first = processes.start(*worker, "--log-level", "WARNING", env=env)
    assert wait_for(lambda: sideeffects.count(db, task) >= TASKS // 4, timeout=60), (
        "the first worker did not get going"
    )
    first.send_signal(signal.SIGKILL)
    assert first.wait(10) == -signal.SIGKILL

    ran_before_kill = sideeffects.count(db, task)
    assert ran_before_kill < TASKS, "the kill should land in the middle of the run"
    held = held_by(client, topic, GROUP, first.pid)
    held_tasks = {task_of_message[m] for m in held}
    per_consumer = Counter(held.values())
    assert all(n <= BATCH for n in per_consumer.values()), per_consumer

    second = processes.start(*worker, "--log-level", "WARNING", "--burst", env=env)
    assert second.wait(60) == 0, second.stdout.read()

    row = next(g for g in topic_status(client, topic)["groups"] if g["name"] == GROUP)
    counts = {k: row[k] for k in ("done", "pending", "lag", "retrying", "dead")}
    assert counts == {"done": TASKS, "pending": 0, "lag": 0, "retrying": 0, "dead": 0}
    done = done_ids(client, topic, GROUP)
    assert len(done) == TASKS
    assert set(done) == {s.id for s in sent}, "exactly one done record per task"

    runs = sideeffects.runs(db, task)
    assert set(runs) == {str(i) for i in range(TASKS)}, "every task ran at least once"
    repeated = {int(k) for k, n in runs.items() if n > 1}
    print(
        f"\nSIGKILL after {ran_before_kill} runs; the worker held {len(held)} messages "
        f"({len(per_consumer)} consumers, at most {max(per_consumer.values(), default=0)} "
        f"each); {len(repeated)} side effects repeated"
    )
    assert len(repeated) <= len(held)
    assert repeated <= held_tasks, "only tasks the killed worker held may run again"
    assert max(runs.values()) <= 2


def test_a_takeover_batch_holds_at_most_count_messages(client):
    client.create_topic("takeover", queues=4)
    client.send_many("takeover", [{"n": i} for i in range(8 * BATCH)])
    doomed = client.consumer("takeover", GROUP, visibility_timeout=60, name="doomed")
    held = sum(len(doomed.receive(count=BATCH, block=0.1)) for _ in range(20))
    assert held == 8 * BATCH
    time.sleep(0.3)  # its leases are now older than the taker's visibility timeout

    taker = client.consumer("takeover", GROUP, visibility_timeout=0.2, name="taker")
    # Leases are taken over at a second look (or at once past ten leases): poll as a worker
    # does rather than count on one receive landing on either side of that line.
    batch: list = []
    deadline = time.monotonic() + 10
    while not batch and time.monotonic() < deadline:
        batch = taker.receive(count=BATCH, block=0.1)

    assert 0 < len(batch) <= BATCH
