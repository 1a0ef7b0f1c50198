"""A broker's trouble stays with that broker (rule 12): while one broker hangs (SIGSTOP: a
stuck VM, a long fork, a full disk), the leases of the other broker's running jobs stay
fresh, its queues keep being served, and nothing runs twice, even when another worker joins."""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Iterator

import pytest

from redismq import App, Client, urls
from redismq.brokers import add_broker
from redismq.routing import queue_for_key
from redismq.workers.worker import Worker
from tests.apps import runtime_app
from tests.conftest import wait_for
from tests.sentinels import Servers

# It hangs a server on purpose: a fault test (the first CI pass only, on Redis 7).
pytestmark = pytest.mark.fault

VISIBILITY = "2"  # seconds: the long jobs below outlive many leases


@pytest.fixture
def servers() -> Iterator[Servers]:
    started = Servers()
    yield started
    started.stop_all()


@pytest.fixture
def db(tmp_path, monkeypatch) -> str:
    path = str(tmp_path / "runs.db")
    monkeypatch.setenv("REDISMQ_TEST_DB", path)
    runtime_app.record("init", "")
    return path


def starts(db: str, kind: str) -> Counter[str]:
    with sqlite3.connect(db) as conn:
        return Counter(v for (v,) in conn.execute("SELECT value FROM runs WHERE kind = ?", (kind,)))


def key_on(client: Client, topic: str, broker: str) -> str:
    """A message key whose queue lives on `broker`."""
    placement = client.topic(topic).placement
    return next(
        k for k in (f"k{i}" for i in range(1000)) if placement[queue_for_key(k, 4)] == broker
    )


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_hung_broker_stalls_only_its_own_queues(client, url, db, servers, processes, kind):
    """Sync jobs run on a thread per slot; async ones (a topic of coroutines) side by side
    on one event loop per broker."""
    healthy, hung = servers.start(), servers.start()
    add_broker(client, "healthy", healthy.url)
    add_broker(client, "hung", hung.url)
    long = runtime_app.slow if kind == "sync" else runtime_app.async_slow_retried
    topic = long.topic
    client.create_topic(topic, queues=4)
    assert sorted(client.topic(topic).placement) == ["healthy", "healthy", "hung", "hung"]
    runtime_app.app.connect(client)
    try:
        for i in range(8):  # keyless: two per queue, four on each broker
            long.send(9.0, f"long-{i}")
        args = ["worker", "tests.apps.runtime_app:app", "--url", url, "--log-level", "WARNING"]
        args += ["--topic", topic, "--concurrency", "4", "--visibility-timeout", VISIBILITY]
        processes.start(*args)
        assert wait_for(lambda: len(starts(db, "slow-start")) == 8, timeout=30)
        processes.start(*args)  # a second worker, idle, ready to take over expired leases
        time.sleep(2)
        os.kill(hung.pid, signal.SIGSTOP)
        stopped = time.monotonic()
        try:
            key = key_on(client, topic, "healthy")
            fresh = [long.send_with_options((0.1, f"fresh-{i}"), key=key) for i in range(3)]
            # The healthy broker's queue is served, and nothing of it runs twice, while the
            # leases (2 s) of its long jobs come due again and again.
            assert [j.result(timeout=30) for j in fresh] == [f"fresh-{i}" for i in range(3)]
            time.sleep(max(0.0, 6 - (time.monotonic() - stopped)))
            assert max(starts(db, "slow-start").values()) == 1
        finally:
            os.kill(hung.pid, signal.SIGCONT)
        assert wait_for(lambda: len(starts(db, "slow-end")) == 8 + 3, timeout=60)
        runs = starts(db, "slow-start")
        assert sorted(runs) == [f"fresh-{i}" for i in range(3)] + [f"long-{i}" for i in range(8)]
        assert set(runs.values()) == {1}, runs  # not one long job ran twice
    finally:
        runtime_app.app.connect(None)


def test_a_send_after_its_connection_idled_is_not_stored_twice(servers, monkeypatch) -> None:
    """A thread's connection idle past its health-check interval (30 s) is checked with a
    PING before its next command: when the broker hangs, that PING times out and the send
    moves on to another broker with nothing written to the hung one. Without the PING, the
    send's script was written there, timed out, and moved on; once the broker resumed it
    ran the script too: the message was stored on both, and its job would run twice."""
    options = urls.connection_options
    monkeypatch.setattr(urls, "connection_options", lambda _, *more: options(0.25, *more))
    meta, b0, b1 = servers.start(), servers.start(), servers.start()
    client = Client(meta.url, send_timeout=10)
    add_broker(client, "b0", b0.url)
    add_broker(client, "b1", b1.url)
    topic = client.create_topic("idle", queues=4)
    for _ in range(8):  # every queue's broker has this thread's connection
        client.send_message("idle", b"warm")
    hung = {"b0": b0, "b1": b1}[topic.placement[0]]
    client.router.broker(topic.placement[0]).sender().connection.next_health_check = 0
    os.kill(hung.pid, signal.SIGSTOP)
    try:
        sent = [client.send_message("idle", b"after").id for _ in range(4)]
    finally:
        os.kill(hung.pid, signal.SIGCONT)
    time.sleep(0.5)  # what the hung broker read meanwhile has run
    stored: Counter[str] = Counter()
    for server in (b0, b1):
        for q in range(4):
            stream = client.router.queue_keys("idle", q).stream
            stored.update(f[b"id"].decode() for _, f in server.client().xrange(stream))
    assert [stored[i] for i in sent] == [1, 1, 1, 1]
    client.close()


def test_a_worker_is_replaced_though_its_broker_hung_as_a_job_overran(servers, monkeypatch):
    """The watchdog gives up a sync job past its time limit, fails it and asks for a fresh
    process. When that failure could not be written (the broker hung at that moment), the
    runner stayed marked abandoned but the process was never replaced: its fetch thread
    then dropped every batch it read unrun, and nothing restarted it."""
    options = urls.connection_options
    monkeypatch.setattr(urls, "connection_options", lambda _, *more: options(0.25, *more))
    meta, broker = servers.start(), servers.start()
    client = Client(meta.url)
    add_broker(client, "b", broker.url)
    client.create_topic("overrun", queues=1)
    app = App(client)
    started, release = threading.Event(), threading.Event()

    @app.task(topic="overrun", name="overrun", time_limit=0.5)
    def overrun() -> None:
        started.set()
        release.wait(30)

    overrun.send()
    worker = Worker(app, concurrency=1)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        assert started.wait(15)
        os.kill(broker.pid, signal.SIGSTOP)
        try:
            time.sleep(10)  # the watchdog gives it up at 0.5 s; its failure times out
        finally:
            os.kill(broker.pid, signal.SIGCONT)
        assert wait_for(lambda: worker.replaced, timeout=10), "the process is to be replaced"
        assert worker.stopping.is_set()
    finally:
        release.set()
        worker.stop()
        thread.join(15)
        client.close()
