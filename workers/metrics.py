"""Prometheus metrics of a worker (`redismq worker ... --metrics-port P`).

`Metrics` is a processing hook that counts outcomes and times jobs; `LagCollector` is a
housekeeping component that reads each own subscription's queue lag every few seconds.

With one process the default registry is served in-process. With a supervised pool the
children write their values to files in a directory named by $PROMETHEUS_MULTIPROC_DIR
(prometheus-client's multiprocess mode) and the parent serves the sum over them
(`MultiProcessExporter`). prometheus_client decides at import time whether it writes such
files, so this module imports it only inside functions: the parent sets the variable
before its first import, and the spawned children inherit it.
"""

from __future__ import annotations

import glob
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from redismq import Client, Message, RedisMQError
from redismq.hooks import Hooks
from redismq.status import topic_status

from .housekeeping import Component

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from prometheus_client import CollectorRegistry, Gauge

log = logging.getLogger("redismq.metrics")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
LABELS = ("task", "topic", "group")
# Jobs range from milliseconds (a cache write) to minutes (a report).
DURATION_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    float("inf"),
)


class MetricsError(RedisMQError):
    """The metrics endpoint cannot be served (e.g. its port is taken)."""


@dataclass(slots=True, frozen=True)
class _Series:
    """The labelled children of one (task, topic, group), looked up once."""

    processed: Any
    failed: Any
    retried: Any
    dead: Any
    cancelled: Any
    in_flight: Any
    duration: Any


class Metrics(Hooks):
    """Counts outcomes, times jobs and tracks jobs in flight, labelled by task, topic, group.

    A plain handler's `task` label is `topic/group`, as in the outcome log. A message that
    cannot be run at all (bad body, unknown task) counts as dead-lettered only.

    `processed` counts handler runs that succeeded; the few of those that turned out to be
    completed already by another consumer are also counted in `duplicates suppressed`
    (labelled by topic and group: the hook does not learn which task they were).

    A failure inside a hook is logged once and otherwise ignored: metrics never break
    processing.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        from prometheus_client import REGISTRY, Counter, Gauge, Histogram

        reg = REGISTRY if registry is None else registry
        self.processed = Counter(
            "redismq_jobs_processed", "Jobs whose handler succeeded.", LABELS, registry=reg
        )
        self.failed = Counter(
            "redismq_jobs_failed",
            "Handler runs that raised or overran their time limit.",
            LABELS,
            registry=reg,
        )
        self.retried = Counter(
            "redismq_jobs_retried",
            "Failed jobs scheduled for another attempt.",
            LABELS,
            registry=reg,
        )
        self.dead = Counter(
            "redismq_jobs_dead_lettered",
            "Jobs moved to their group's dead-letter stream.",
            LABELS,
            registry=reg,
        )
        self.cancelled = Counter(
            "redismq_jobs_cancelled", "Running jobs stopped by a cancel.", LABELS, registry=reg
        )
        self.duplicates = Counter(
            "redismq_duplicates_suppressed",
            "Successful runs whose message the group had already completed.",
            ("topic", "group"),
            registry=reg,
        )
        self.in_flight = Gauge(
            "redismq_jobs_in_flight",
            "Jobs running now.",
            LABELS,
            registry=reg,
            multiprocess_mode="livesum",
        )
        self.duration = Histogram(
            "redismq_job_duration_seconds",
            "Time a handler ran, whatever its outcome.",
            LABELS,
            registry=reg,
            buckets=DURATION_BUCKETS,
        )
        self.queue_lag = Gauge(
            "redismq_queue_lag",
            "Messages of a topic not yet delivered to the group (new and due retries).",
            ("topic", "group"),
            registry=reg,
            multiprocess_mode="livemostrecent",
        )
        self._series: dict[tuple[str, str, str], _Series] = {}
        self._running: dict[tuple[str, str, str], _Series] = {}
        self._subscriptions: set[tuple[str, str]] = set()
        self._local = threading.local()
        self._lock = threading.Lock()
        self._broken: set[str] = set()

    # -- hooks -------------------------------------------------------------------------

    def before_process(self, msg: Message, task: str | None) -> None:
        try:
            key = (msg.topic, msg.group, msg.id)
            if key not in self._running:  # started again without an end: in flight once
                series = self._running[key] = self.series(msg, task)
                series.in_flight.inc()
        except Exception:
            self._broke("before_process")

    def after_process(
        self,
        msg: Message,
        task: str | None,
        outcome: str,
        duration: float,
        error: str | None,
        *,
        exc: BaseException | None = None,
        result: Any = None,
    ) -> None:
        try:
            ran = self._running.pop((msg.topic, msg.group, msg.id), None)
            series = ran or self.series(msg, task)
            if ran is not None:
                series.in_flight.dec()
                series.duration.observe(duration)
            if outcome == "done":
                series.processed.inc()
                self._local.subscription = (msg.topic, msg.group)
            elif outcome == "cancelled":
                series.cancelled.inc()
            elif outcome in ("retry", "dead"):
                if ran is not None:
                    series.failed.inc()
                (series.retried if outcome == "retry" else series.dead).inc()
        except Exception:
            self._broke("after_process")

    def after_settle(self, completed: int, duplicates: int) -> None:
        if not duplicates:
            return
        try:
            self.duplicates.labels(*self._settling()).inc(duplicates)
        except Exception:
            self._broke("after_settle")

    # -- helpers -----------------------------------------------------------------------

    def series(self, msg: Message, task: str | None) -> _Series:
        """The children of a message's labels (made on first use, then cached)."""
        labels = (task or f"{msg.topic}/{msg.group}", msg.topic, msg.group)
        series = self._series.get(labels)
        if series is None:
            with self._lock:
                series = self._series.get(labels)
                if series is None:
                    series = self._series[labels] = _Series(
                        *(
                            m.labels(*labels)
                            for m in (
                                self.processed,
                                self.failed,
                                self.retried,
                                self.dead,
                                self.cancelled,
                                self.in_flight,
                                self.duration,
                            )
                        )
                    )
                    self._subscriptions.add(labels[1:])
        return series

    def _settling(self) -> tuple[str, str]:
        """The subscription whose successes are being settled.

        A fetch thread serves one subscription, and settles on its own thread what it ran.
        Only a stuck job's batch is settled from the housekeeping thread; then the
        subscription is known when the worker has just one.
        """
        own = getattr(self._local, "subscription", None)
        if own is not None:
            return own
        if len(self._subscriptions) == 1:
            return next(iter(self._subscriptions))
        return ("unknown", "unknown")

    def _broke(self, point: str) -> None:
        if point in self._broken:
            return
        self._broken.add(point)
        log.exception("metrics hook %s failed (further failures there are not logged)", point)


class LagCollector(Component):
    """Sets the queue-lag gauge of each (topic, group) this worker consumes, every few
    seconds, from the exact counts of `redismq status`."""

    interval = 5.0

    def __init__(
        self,
        client: Client,
        gauge: Gauge,
        subscriptions: Iterable[tuple[str, str]],
        interval: float | None = None,
    ) -> None:
        self.client = client
        self.gauge = gauge
        self.groups: dict[str, set[str]] = {}
        for topic, group in subscriptions:
            self.groups.setdefault(topic, set()).add(group)
        if interval is not None:
            self.interval = interval
        self.failing = False

    def tick(self) -> None:
        try:
            for topic, groups in sorted(self.groups.items()):
                with self.client.errors():
                    status = topic_status(self.client, topic)
                for row in status["groups"]:
                    if row["name"] in groups:
                        self.gauge.labels(topic, row["name"]).set(row["lag"])
        except Exception as exc:
            if not self.failing:
                log.warning(
                    "cannot read queue lag for metrics: %s (not repeated until it works)", exc
                )
            self.failing = True
            return
        if self.failing:
            log.info("queue lag readable again")
            self.failing = False


class MetricsServer:
    """The HTTP endpoint (any path answers with the metrics; Prometheus asks /metrics)."""

    def __init__(self, host: str, port: int, registry: CollectorRegistry | None = None) -> None:
        from prometheus_client import REGISTRY, start_http_server

        try:
            server, thread = start_http_server(
                port, addr=host, registry=REGISTRY if registry is None else registry
            )
        except OSError as exc:
            raise MetricsError(
                f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}"
            ) from None
        self.server: WSGIServer = server
        self._thread = thread
        log.info("serving Prometheus metrics on http://%s:%d/metrics", host, port)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)


class MultiProcessExporter:
    """The parent's side of a supervised pool's metrics: a fresh directory for the
    children's value files (exported as $PROMETHEUS_MULTIPROC_DIR, so create this before
    the children start), and the endpoint that serves their sum."""

    def __init__(self, host: str, port: int) -> None:
        self.dir = tempfile.mkdtemp(prefix="redismq-metrics-")
        self._previous = os.environ.get(MULTIPROC_ENV)
        os.environ[MULTIPROC_ENV] = self.dir
        # A scrape never reads the files while a dead child's counts are being folded
        # (it would count them twice, or not at all: a counter that goes back).
        self._lock = threading.Lock()
        try:
            from prometheus_client import CollectorRegistry

            registry = CollectorRegistry()
            registry.register(_PoolCollector(self.dir, self._lock))
            self.server = MetricsServer(host, port, registry)
        except BaseException:
            self._remove_dir()
            raise

    def process_dead(self, pid: int) -> None:
        """Drop a dead child's live gauges (in flight, lag) and fold its counts into the
        pool's archive: they keep counting, and the directory holds the files of the live
        children and one archive, not a set per child the pool ever ran."""
        from prometheus_client import multiprocess

        try:
            multiprocess.mark_process_dead(pid, self.dir)
            with self._lock:
                for kind in ("counter", "histogram"):
                    self._fold(os.path.join(self.dir, f"{kind}_{pid}.db"), kind)
        except OSError as exc:
            log.warning("cannot clear the metrics of dead process %d: %s", pid, exc)

    def _fold(self, path: str, kind: str) -> None:
        """Add a dead child's values of one kind to the archive's, then remove its file."""
        from prometheus_client.mmap_dict import MmapedDict

        if not os.path.exists(path):
            return
        archive = MmapedDict(os.path.join(self.dir, f"{kind}_archive.db"))
        try:
            for key, value, timestamp, _ in MmapedDict.read_all_values_from_file(path):
                archive.write_value(key, archive.read_value(key)[0] + value, timestamp)
        finally:
            archive.close()
        os.remove(path)

    def close(self) -> None:
        self.server.close()
        self._remove_dir()

    def _remove_dir(self) -> None:
        if self._previous is None:
            os.environ.pop(MULTIPROC_ENV, None)
        else:
            os.environ[MULTIPROC_ENV] = self._previous
        shutil.rmtree(self.dir, ignore_errors=True)


class _PoolCollector:
    """The sum of the pool's value files (prometheus-client's multiprocess collector),
    read under the lock the folding of a dead child's counts holds."""

    def __init__(self, path: str, lock: threading.Lock) -> None:
        self.path = path
        self.lock = lock

    def collect(self) -> Iterable[Any]:
        from prometheus_client.multiprocess import MultiProcessCollector

        with self.lock:
            files = glob.glob(os.path.join(self.path, "*.db"))
            return list(MultiProcessCollector.merge(files, accumulate=True))
