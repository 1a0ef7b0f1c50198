"""What dead processes leave behind is pruned, on a real server: heartbeat records of killed
workers (the janitor), group consumers of dead processes (by the other consumers' reads,
only once they hold nothing), ids of `job.result()` waiters that died (the janitor)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from redismq import fetching, retention
from redismq.errors import JobTimeout
from redismq.job import Job
from redismq.process import host_id
from redismq.status import live_workers
from redismq.workers.janitor import Janitor
from tests.apps import runtime_app
from tests.conftest import ROOT, wait_for
from tests.test_runtime import kill_group, rows, start_worker


@pytest.fixture
def db(tmp_path, monkeypatch):
    path = str(tmp_path / "runs.db")
    monkeypatch.setenv("REDISMQ_TEST_DB", path)
    runtime_app.record("init", "")
    return path


@pytest.fixture
def rt(client, db):
    runtime_app.app.connect(client)
    yield runtime_app
    runtime_app.app.connect(None)


def consumers(client, topic: str, group: str) -> dict[str, int]:
    """Every consumer of the group on the topic's streams -> what it holds."""
    t = client.topic(topic)
    out: dict[str, int] = {}
    for q in range(t.queues):
        k = client.router.queue_keys(topic, q)
        r = client.router.queue_broker(t, q).redis
        for stream in (k.stream, k.retry_stream(group)):
            if r.exists(stream):
                for c in r.xinfo_consumers(stream, group):
                    out[c["name"].decode()] = out.get(c["name"].decode(), 0) + c["pending"]
    return out


def janitor(client, **options) -> Janitor:
    subs = [s for s in runtime_app.app.subscriptions.values() if s.topic == "rt"]
    return Janitor(client, subs, **options)


def test_a_killed_workers_record_and_consumers_are_pruned_once_they_hold_nothing(
    rt, client, url, db, processes, monkeypatch
):
    monkeypatch.setattr(retention, "CONSUMER_IDLE", 0.0)
    monkeypatch.setattr(fetching, "RETIRE_EVERY", 0.0)
    job = rt.slow_retried.send(30.0, "held")
    worker = start_worker(processes, url, "--processes", "1", "--topic", "rt")
    dead = f"{host_id()}:{worker.pid}"
    assert wait_for(
        lambda: rows(db, "slow-start") and client.meta.hexists(client.router.keys.workers, dead),
        timeout=30,
    )
    worker.send_signal(signal.SIGKILL)
    worker.wait(10)
    before = consumers(client, "rt", "workers")
    assert len(before) > 1 and sum(before.values()) == 1

    # An hour later by the janitor's clock: the record is stale.
    janitor(client, clock=lambda: time.time() + 3600).tick()
    assert not client.meta.hexists(client.router.keys.workers, dead)
    # Another consumer's read: the idle consumers go, the one that holds the running job
    # stays (deleting it would drop the job).
    watcher = client.consumer("rt", "workers")
    watcher.receive(count=10, block=0.05)
    left = {n: held for n, held in consumers(client, "rt", "workers").items() if n in before}
    assert list(left.values()) == [1]

    # Once another consumer took the job over, the dead one goes too.
    taker = client.consumer("rt", "workers", visibility_timeout=0.05)
    time.sleep(0.1)
    taken_: list = []  # (expired leases are taken at a second look)
    assert wait_for(lambda: taken_.extend(taker.receive(count=10, block=0.05)) or taken_)
    [taken] = taken_
    taker.ack(taken, "x")
    assert job.result(timeout=1) == "x"
    watcher.receive(count=10, block=0.05)
    assert not set(consumers(client, "rt", "workers")) & set(before)
    watcher.close()
    taker.close()


def test_a_live_worker_keeps_its_record(rt, client, url, db, processes):
    worker = start_worker(processes, url, "--processes", "1", "--topic", "rt")
    assert wait_for(lambda: live_workers(client), timeout=30)
    janitor(client).tick()
    assert live_workers(client)
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(30) == 0


def test_a_supervised_child_killed_leaves_status_at_once(rt, client, url, db, processes):
    worker = start_worker(processes, url, "--processes", "2", start_new_session=True)
    try:
        assert wait_for(lambda: len(live_workers(client)) == 2, timeout=30)
        victim = live_workers(client)[0]["pid"]
        os.kill(victim, signal.SIGKILL)
        assert wait_for(lambda: victim not in {w["pid"] for w in live_workers(client)}, 5)
        assert wait_for(lambda: len(live_workers(client)) == 2, timeout=30)  # replaced
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 0
    finally:
        kill_group(worker.pid, signal.SIGKILL)


WAITER = """
import sys
from redismq import Client
from redismq.job import Job
Job(Client(sys.argv[1]), sys.argv[2], "rt", int(sys.argv[3]), "workers").result(timeout=60)
"""


def test_ids_of_waiters_that_died_are_pruned(rt, client, url):
    job = rt.sync_job.send(1)
    waiting = job.keys.waiting
    proc = subprocess.Popen(
        [sys.executable, "-c", WAITER, url, job.id, str(job.queue)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        r = client.meta
        assert wait_for(lambda: r.zscore(waiting, job.id) is not None, timeout=20)
    finally:
        proc.kill()
        proc.wait(10)
    time.sleep(2.5)  # past the waiter timeout below: the dead waiter's place is stale
    # A live waiter on the same queue (for a job that does not finish while we look), whose
    # place is fresh: a loaded machine may take a second or so before the janitor looks.
    other = Job(client, "not-finishing", "rt", job.queue, "workers")
    waited: list[BaseException] = []

    def wait_for_other() -> None:
        try:
            other.result(6)
        except BaseException as exc:  # noqa: BLE001 - checked below
            waited.append(exc)

    waiter = threading.Thread(target=wait_for_other)
    waiter.start()
    assert wait_for(lambda: r.zscore(waiting, other.id) is not None, timeout=5)
    janitor(client, waiter_timeout=2.0).tick()
    assert r.zscore(waiting, job.id) is None
    assert r.zscore(waiting, other.id) is not None
    waiter.join()
    assert [type(e) for e in waited] == [JobTimeout]
    # A waiter that gives up leaves the place (the job's other waiters share it) ...
    assert r.zscore(waiting, other.id) is not None
    # ... for the janitor, once it is stale (renewed last as the waiter gave up).
    time.sleep(0.6)
    janitor(client, waiter_timeout=0.5).tick()
    assert r.zcard(waiting) == 0


def test_an_ordered_queue_held_by_a_killed_child_is_taken_over_at_once(client, url, processes):
    client.create_topic("orders", queues=1)
    client.send("orders", {"key": "k", "seq": 0, "sleep": 3}, key="k")
    for seq in range(1, 4):
        client.send("orders", {"key": "k", "seq": seq}, key="k")
    args = ["--processes", "2", "--concurrency", "1", "--visibility-timeout", "30"]
    worker = processes.start(
        "worker",
        "tests.apps.ordered_app:app",
        "--url",
        url,
        "--log-level",
        "WARNING",
        *args,
        start_new_session=True,
    )
    try:
        r = client.meta
        assert wait_for(lambda: r.llen("started:k") == 1, timeout=30)
        killed = time.monotonic()
        os.kill(int(r.lindex("started:k", 0)), signal.SIGKILL)
        assert wait_for(lambda: r.llen("seen:k") == 4, timeout=25)
        took = time.monotonic() - killed
        print(f"the ordered queue of the killed child was done {took:.1f}s after the kill")
        assert took < 15  # the lease and the visibility timeout are 30 s
        assert [int(s) for s in r.lrange("seen:k", 0, -1)] == [0, 1, 2, 3]
        assert r.llen("started:k") == 2  # the killed run, then one more
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 0
    finally:
        kill_group(worker.pid, signal.SIGKILL)
