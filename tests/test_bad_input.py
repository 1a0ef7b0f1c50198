"""Bad input everywhere: hand-written stream entries, a full broker, a restarted server."""

from __future__ import annotations

import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from redismq import App, BrokerUnavailable, Client
from redismq.keys import QueueKeys
from redismq.processing import BatchRunner
from redismq.server import LocalServer
from tests.conftest import wait_for

field_names = st.one_of(
    st.sampled_from([b"id", b"body", b"enc", b"created", b"attempt", b"key", b"headers"]),
    st.binary(min_size=1, max_size=20),
)
field_values = st.one_of(
    st.binary(max_size=200),
    st.sampled_from([b"", b"{}", b"[]", b"null", b'{"task": 1}', b"\xff\xfe", b"-1", b"1e999"]),
    st.builds(lambda n: b"[" * n + b"]" * n, st.integers(1, 5000)),
)
entries = st.dictionaries(field_names, field_values, min_size=1, max_size=8)


@pytest.fixture(scope="module")
def shared(server):
    """One client, app and consumer for all hypothesis examples (flushed once)."""
    r = server.client()
    r.flushall()
    client = Client(server.url)
    app = App(client)
    seen: list = []

    @app.consumer("hand", group="g", max_retries=0)
    def handle(msg):
        seen.append(msg.id)

    client.create_topic("hand", queues=1)
    consumer = client.consumer("hand", "g")
    return client, app, consumer, BatchRunner(consumer, app.subscriptions[("hand", "g")])


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(fields=entries)
def test_any_hand_written_entry_is_processed_or_dead_lettered(shared, fields):
    client, app, consumer, runner = shared
    stream = QueueKeys("rmq", "hand", 0).stream
    before_dead = client.meta.xlen(QueueKeys("rmq", "hand", 0).dead("g"))
    client.meta.xadd(stream, fields)
    batch = consumer.receive(count=10, block=0.2)
    counts = runner.run(batch)
    dead_now = client.meta.xlen(QueueKeys("rmq", "hand", 0).dead("g")) - before_dead
    assert counts.processed + dead_now == 1
    assert consumer.backlog() == 0


def test_huge_hand_written_entry_is_handled(shared):
    client, app, consumer, runner = shared
    stream = QueueKeys("rmq", "hand", 0).stream
    client.meta.xadd(stream, {"id": "big", "body": b'"' + b"x" * 5_000_000 + b'"'})
    counts = runner.run(consumer.receive(count=10, block=0.2))
    assert counts.processed == 1 and consumer.backlog() == 0


def test_out_of_memory_broker_refuses_sends_clearly_and_keeps_what_it_has():
    with LocalServer(extra_args=["--maxmemory", "3mb"]) as srv:
        client = Client(srv.url)
        client.create_topic("oom", queues=1)
        consumer = client.consumer("oom", "g")  # before the memory runs out
        sent = []
        with pytest.raises(BrokerUnavailable, match="out of memory"):
            for i in range(100_000):
                sent.append(client.send("oom", {"n": i, "pad": "x" * 200}))
        assert len(sent) > 100
        got = []
        while True:
            batch = consumer.receive(count=500, block=0.1)
            if not batch:
                break
            got += [m.id for m in batch]
        assert set(sent) <= set(got)


def test_worker_and_producer_ride_through_a_server_restart(tmp_path, processes):
    srv = LocalServer(persistence=True, dir=tmp_path / "data").start()
    try:
        client = Client(srv.url)
        client.create_topic("tasks", queues=2)
        db = tmp_path / "effects.db"
        from tests.apps import sideeffects

        sideeffects.connect(db).close()
        worker = processes.start(
            "worker",
            "tests.apps.worker_app:app",
            "--url",
            srv.url,
            "--processes",
            "1",
            "--topic",
            "work",
            "--visibility-timeout",
            "2",
            "--log-level",
            "WARNING",
            env={sideeffects.ENV_DB: str(db)},
        )
        acknowledged: list[int] = []
        stop = threading.Event()

        def produce() -> None:
            i = 0
            while not stop.is_set() and i < 300:
                try:
                    client.send(
                        "work",
                        {"task": "work.record", "args": [i], "kwargs": {}},
                        dedup_key=f"n{i}",
                    )
                    acknowledged.append(i)
                    i += 1
                except BrokerUnavailable:
                    time.sleep(0.1)  # the producer's own retry: same dedup key
                time.sleep(0.005)

        producer = threading.Thread(target=produce)
        producer.start()
        assert wait_for(lambda: len(acknowledged) > 50, timeout=30)
        srv.restart()
        producer.join(timeout=120)
        stop.set()
        assert len(acknowledged) == 300
        assert wait_for(
            lambda: set(sideeffects.runs(db, "work")) >= {str(i) for i in acknowledged},
            timeout=90,
        ), "every acknowledged send was processed after the restart"
        assert worker.poll() is None, "the worker survived the restart"
    finally:
        srv.stop()


def test_worker_warns_about_a_broker_that_may_evict(tmp_path, processes):
    with LocalServer(extra_args=["--maxmemory-policy", "allkeys-lru"]) as srv:
        worker = processes.start(
            "worker",
            "tests.apps.worker_app:app",
            "--url",
            srv.url,
            "--processes",
            "1",
            "--topic",
            "work",
            "--burst",
            "--log-level",
            "WARNING",
        )
        assert worker.wait(60) == 0
        out = worker.stdout.read()
        assert "maxmemory-policy allkeys-lru" in out and "noeviction" in out
