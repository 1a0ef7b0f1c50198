"""Prometheus metrics: the hook against a fresh registry, the lag collector against a real
server, and `redismq worker --metrics-port` with one and with several processes."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import threading
import time
import urllib.error
import urllib.request

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from redismq import JobFailed, Message
from redismq.processing import BatchRunner
from redismq.workers.metrics import LagCollector, Metrics
from tests.apps import metrics_app
from tests.conftest import wait_for

LABELS = {"task": "ok", "topic": "metrics", "group": "workers"}
BOOM = {**LABELS, "task": "boom"}
EVENTS = {"task": "metrics-events/listeners", "topic": "metrics-events", "group": "listeners"}


def message(mid: str = "m1", topic: str = "metrics", group: str = "workers") -> Message:
    return Message(id=mid, topic=topic, queue=0, body={}, created=0, group=group)


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def metrics(registry) -> Metrics:
    return Metrics(registry)


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


# -- the hook, against a fresh registry ------------------------------------------------


def test_a_success_is_counted_timed_and_leaves_nothing_in_flight(metrics, registry):
    msg = message()
    metrics.before_process(msg, "ok")
    assert sample(registry, "redismq_jobs_in_flight", **LABELS) == 1
    metrics.after_process(msg, "ok", "done", 0.25, None)
    metrics.after_settle(1, 0)
    assert sample(registry, "redismq_jobs_in_flight", **LABELS) == 0
    assert sample(registry, "redismq_jobs_processed_total", **LABELS) == 1
    assert sample(registry, "redismq_jobs_failed_total", **LABELS) == 0
    assert sample(registry, "redismq_job_duration_seconds_count", **LABELS) == 1
    assert sample(registry, "redismq_job_duration_seconds_sum", **LABELS) == 0.25
    assert sample(registry, "redismq_job_duration_seconds_bucket", **LABELS, le="0.1") == 0
    assert sample(registry, "redismq_job_duration_seconds_bucket", **LABELS, le="0.25") == 1


def test_failures_count_retries_and_dead_letters(metrics, registry):
    first, last = message("b1"), message("b1")
    for msg, outcome in ((first, "retry"), (last, "dead")):
        metrics.before_process(msg, "boom")
        metrics.after_process(msg, "boom", outcome, 0.01, "RuntimeError: boom")
    assert sample(registry, "redismq_jobs_failed_total", **BOOM) == 2
    assert sample(registry, "redismq_jobs_retried_total", **BOOM) == 1
    assert sample(registry, "redismq_jobs_dead_lettered_total", **BOOM) == 1
    assert sample(registry, "redismq_jobs_processed_total", **BOOM) == 0
    assert sample(registry, "redismq_job_duration_seconds_count", **BOOM) == 2
    assert sample(registry, "redismq_jobs_in_flight", **BOOM) == 0


def test_a_message_that_cannot_run_is_dead_but_not_a_failed_run(metrics, registry):
    metrics.after_process(message(), None, "dead", 0.0, "UnknownTask: nope")
    labels = {**LABELS, "task": "metrics/workers"}
    assert sample(registry, "redismq_jobs_dead_lettered_total", **labels) == 1
    assert sample(registry, "redismq_jobs_failed_total", **labels) == 0
    assert sample(registry, "redismq_job_duration_seconds_count", **labels) == 0
    assert sample(registry, "redismq_jobs_in_flight", **labels) == 0


def test_plain_handlers_are_labelled_topic_slash_group_and_cancels_counted(metrics, registry):
    msg = message(topic="metrics-events", group="listeners")
    metrics.before_process(msg, None)
    metrics.after_process(msg, None, "cancelled", 0.5, None)
    assert sample(registry, "redismq_jobs_cancelled_total", **EVENTS) == 1
    assert sample(registry, "redismq_job_duration_seconds_count", **EVENTS) == 1
    assert sample(registry, "redismq_jobs_in_flight", **EVENTS) == 0


def test_one_message_running_in_two_groups_is_two_jobs_in_flight(metrics, registry):
    a, b = message("same", group="a"), message("same", group="b")
    metrics.before_process(a, "ok")
    metrics.before_process(b, "ok")
    metrics.before_process(b, "ok")  # a redelivery does not count twice
    assert sample(registry, "redismq_jobs_in_flight", **{**LABELS, "group": "a"}) == 1
    assert sample(registry, "redismq_jobs_in_flight", **{**LABELS, "group": "b"}) == 1
    metrics.after_process(b, "ok", "done", 0.1, None)
    assert sample(registry, "redismq_jobs_in_flight", **{**LABELS, "group": "b"}) == 0
    assert sample(registry, "redismq_jobs_in_flight", **{**LABELS, "group": "a"}) == 1


def test_duplicates_are_labelled_by_the_settling_threads_subscription(metrics, registry):
    def run(group: str) -> None:
        msg = message(f"d-{group}", group=group)
        metrics.before_process(msg, "ok")
        metrics.after_process(msg, "ok", "done", 0.1, None)
        metrics.after_settle(0, 1)

    threads = [threading.Thread(target=run, args=(g,)) for g in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    run("a")
    assert sample(registry, "redismq_duplicates_suppressed_total", topic="metrics", group="a") == 2
    assert sample(registry, "redismq_duplicates_suppressed_total", topic="metrics", group="b") == 1


def test_a_failing_hook_is_logged_once_and_never_raises(metrics, registry, caplog):
    class Broken:
        def labels(self, *args):
            raise RuntimeError("broken metric")

    metrics.processed = Broken()
    with caplog.at_level(logging.ERROR, logger="redismq.metrics"):
        for i in range(3):
            msg = message(f"x{i}")
            metrics.before_process(msg, "ok")
            metrics.after_process(msg, "ok", "done", 0.1, None)
    failures = [r for r in caplog.records if "after_process" in r.getMessage()]
    assert len(failures) == 1


# -- queue lag, against a real server --------------------------------------------------


def test_a_cancelled_run_whose_message_was_taken_over_leaves_nothing_in_flight(
    client, app, metrics, registry
):
    """A run stopped by a cancel whose message another consumer took over meanwhile (its
    settle finds the lease lost): it is counted as lost, as the other lost runs are, and
    leaves the in-flight gauge. Before, its hooks were not told it ended: one job in
    flight for the life of the process. Real server."""

    @app.consumer("taken", group="g")
    def handle(msg):
        raise asyncio.CancelledError  # what a cancel makes the run end with

    client.create_topic("taken", queues=1)
    client.send("taken", 1)
    mine = client.consumer("taken", "g", name="a", visibility_timeout=0.2)
    other = client.consumer("taken", "g", name="b", visibility_timeout=0.2)
    batch = mine.receive(count=1, block=1)
    taken: list = []
    deadline = time.monotonic() + 15
    while not taken and time.monotonic() < deadline:  # at its second look
        taken += other.receive(count=1, block=0.2)
    assert len(taken) == 1
    counts = BatchRunner(mine, app.subscriptions[("taken", "g")], [metrics]).run(batch)
    assert (counts.lost, counts.cancelled) == (1, 0)
    labels = {"task": "taken/g", "topic": "taken", "group": "g"}
    assert sample(registry, "redismq_jobs_in_flight", **labels) == 0


def test_lag_collector_sets_the_exact_lag_of_its_own_groups(client, metrics, registry):
    client.create_topic("lagged", queues=2)
    mine = client.consumer("lagged", "mine", create=True)
    client.consumer("lagged", "other", create=True)
    client.send_many("lagged", [{"n": i} for i in range(7)])
    collector = LagCollector(client, metrics.queue_lag, [("lagged", "mine")])
    collector.tick()
    assert sample(registry, "redismq_queue_lag", topic="lagged", group="mine") == 7
    assert sample(registry, "redismq_queue_lag", topic="lagged", group="other") is None
    got = []
    assert wait_for(lambda: got.extend(mine.receive(count=3, block=0.1)) or len(got) >= 3)
    collector.tick()
    assert sample(registry, "redismq_queue_lag", topic="lagged", group="mine") == 7 - len(got)


def test_lag_collector_logs_an_unreadable_broker_once(metrics, caplog):
    class Down:
        def errors(self):
            raise ConnectionError("broker down")

    collector = LagCollector(Down(), metrics.queue_lag, [("t", "g")])  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING, logger="redismq.metrics"):
        for _ in range(3):
            collector.tick()
    assert len([r for r in caplog.records if "queue lag" in r.getMessage()]) == 1


# -- the worker's endpoint, with real processes ----------------------------------------


@pytest.fixture
def ma(client):
    metrics_app.app.connect(client)
    yield metrics_app
    metrics_app.app.connect(None)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def scrape(port: int) -> dict[tuple[str, frozenset], float] | None:
    """Every sample of the endpoint by (name, labels); None while it does not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            text = reply.read().decode()
    except (urllib.error.URLError, ConnectionError):
        return None
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: dict | None, name: str, default: float = 0.0, **labels: str) -> float | None:
    """A sample's value (`default` if the endpoint has none); None if it did not answer."""
    if samples is None:
        return None
    return samples.get((name, frozenset(labels.items())), default)


def start_worker(processes, url: str, port: int, *args: str, env: dict | None = None):
    return processes.start(
        "worker",
        "tests.apps.metrics_app:app",
        "--url",
        url,
        "--log-level",
        "WARNING",
        "--metrics-port",
        str(port),
        *args,
        env=env,
    )


@pytest.mark.parametrize("pool", ["1", "2"])
def test_worker_serves_the_exact_counts(ma, client, url, processes, tmp_path, pool):
    oks = [ma.ok.send(i) for i in range(20)]
    bad = ma.boom.send()
    client.send_many("metrics-events", [{"n": i} for i in range(5)])
    port = free_port()
    env = {"TMPDIR": str(tmp_path)}
    worker = start_worker(processes, url, port, "--processes", pool, "--concurrency", "2", env=env)
    assert [j.result(timeout=30) for j in oks] == list(range(20))
    with pytest.raises(JobFailed, match="boom"):
        bad.result(timeout=30)

    expected = [
        ("redismq_jobs_processed_total", LABELS, 20),
        ("redismq_job_duration_seconds_count", LABELS, 20),
        ("redismq_jobs_failed_total", LABELS, 0),
        ("redismq_jobs_processed_total", BOOM, 0),
        ("redismq_jobs_failed_total", BOOM, 2),  # the first try and one retry
        ("redismq_jobs_retried_total", BOOM, 1),
        ("redismq_jobs_dead_lettered_total", BOOM, 1),
        ("redismq_job_duration_seconds_count", BOOM, 2),
        ("redismq_jobs_processed_total", EVENTS, 5),
        ("redismq_job_duration_seconds_count", EVENTS, 5),
        ("redismq_queue_lag", {"topic": "metrics", "group": "workers"}, 0),
        ("redismq_queue_lag", {"topic": "metrics-events", "group": "listeners"}, 0),
    ]

    def read(s: dict) -> list[tuple[str, dict, float | None]]:
        # a counter not yet made is 0; a lag gauge not yet set is not
        return [
            (name, labels, value(s, name, default=-1 if "lag" in name else 0, **labels))
            for name, labels, _ in expected
        ]

    def settled() -> bool:
        # The counts of a job's outcome, its settle and the lag gauges (set one topic after
        # the other) come at different moments: wait for each value asserted.
        s = scrape(port)
        in_flight = [v for (name, _), v in (s or {}).items() if name == "redismq_jobs_in_flight"]
        return s is not None and read(s) == expected and in_flight and not any(in_flight)

    assert wait_for(settled, timeout=30), (worker.poll(), read(scrape(port) or {}))
    s = scrape(port)
    assert sum(v for (name, _), v in s.items() if name.endswith("_cancelled_total")) == 0
    assert sum(v for (name, _), v in s.items() if name.startswith("redismq_duplicates")) == 0
    if pool == "2":
        assert len(list(tmp_path.glob("redismq-metrics-*"))) == 1
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(30) == 0
    assert list(tmp_path.glob("redismq-metrics-*")) == []  # the pool's value files are gone


def test_a_killed_child_keeps_its_counts_and_leaves_nothing_in_flight(ma, url, processes, tmp_path):
    port = free_port()
    env = {"TMPDIR": str(tmp_path)}
    worker = start_worker(processes, url, port, "--processes", "2", "--concurrency", "1", env=env)
    assert [j.result(timeout=30) for j in [ma.ok.send(i) for i in range(10)]] == list(range(10))
    job = ma.hang.send(8)  # killed, then run again by the other process at once
    assert wait_for(lambda: job.progress() is not None, timeout=30)
    victim = int(job.progress()[1])
    hang = {**LABELS, "task": "hang"}
    assert wait_for(lambda: value(scrape(port), "redismq_jobs_in_flight", **hang) == 1)
    os.kill(victim, signal.SIGKILL)
    # The supervisor replaces the child and drops its live gauges.
    assert wait_for(lambda: value(scrape(port), "redismq_jobs_in_flight", **hang) == 0, 20)
    assert [j.result(timeout=30) for j in [ma.ok.send(i) for i in range(10)]] == list(range(10))
    assert wait_for(lambda: value(scrape(port), "redismq_jobs_processed_total", **LABELS) == 20)
    # Its counts were folded into the pool's archive: a pool that replaces children (time
    # limits, cancels, crashes) does not pile up a value file per process it ever ran.
    [values] = tmp_path.glob("redismq-metrics-*")
    assert not [f.name for f in values.iterdir() if f.stem.endswith(f"_{victim}")]
    assert (values / "counter_archive.db").exists()
    assert job.result(timeout=30) is None
    assert worker.poll() is None
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(30) == 0
    assert list(tmp_path.glob("redismq-metrics-*")) == []


@pytest.mark.parametrize("pool", ["1", "2"])
def test_a_taken_port_is_one_clear_error(ma, url, processes, tmp_path, pool):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {"TMPDIR": str(tmp_path)}
        worker = start_worker(processes, url, port, "--processes", pool, env=env)
        assert worker.wait(30) == 1
        output = worker.stdout.read()
    assert f"error: cannot serve metrics on 127.0.0.1:{port}" in output
    assert "Traceback" not in output
    assert list(tmp_path.glob("redismq-metrics-*")) == []


def test_a_failure_that_could_not_be_recorded_leaves_nothing_in_flight(url, metrics, registry):
    """A run that failed while its broker could not take the retry (here: writes paused
    past the socket timeout) is kept for the next receive; when its lease lapsed meanwhile
    and another consumer took it over, this one lets it go. Its hooks were never told the
    run ended: one job in flight for the life of the process. Real server."""
    from redismq import App, BrokerUnavailable, Client, urls

    options = urls.connection_options
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(urls, "connection_options", lambda _, *more: options(0.25, *more))
        client = Client(url)
    app = App(client)
    admin = client.meta

    @app.consumer("unrecorded", group="g")
    def handle(msg):
        admin.execute_command("CLIENT", "PAUSE", 3000, "WRITE")
        raise RuntimeError("boom")

    client.create_topic("unrecorded", queues=1)
    client.send("unrecorded", 1)
    mine = client.consumer("unrecorded", "g", name="a", visibility_timeout=0.5)
    other = client.consumer("unrecorded", "g", name="b", visibility_timeout=0.5)
    runner = BatchRunner(mine, app.subscriptions[("unrecorded", "g")], [metrics])
    with pytest.raises(BrokerUnavailable):
        runner.run(mine.receive(count=1, block=1))
    admin.execute_command("CLIENT", "UNPAUSE")
    taken: list = []
    deadline = time.monotonic() + 15
    while not taken and time.monotonic() < deadline:
        taken += other.receive(count=1, block=0.2)
    assert len(taken) == 1
    lost = mine.renew(mine.kept())  # what the lease keeper learns, and tells
    assert lost == mine.kept() != []
    mine.lease_lost(lost)
    assert mine.receive(count=1, block=0.2) == []  # another's now: not run here again
    labels = {"task": "unrecorded/g", "topic": "unrecorded", "group": "g"}
    assert sample(registry, "redismq_jobs_in_flight", **labels) == 0
    client.close()
