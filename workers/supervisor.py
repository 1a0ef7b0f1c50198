"""The parent of a worker pool: starts N worker processes, restarts any that dies, and
stops them all on SIGTERM/SIGINT."""

from __future__ import annotations

import contextlib
import gc
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from redismq import RedisMQError
from redismq.process import die_with_parent, say_at_once

from .loader import load_app
from .logs import flush_logs, setup_logging
from .reaper import Reaper
from .worker import STOP_SIGNAL

if TYPE_CHECKING:
    from .housekeeping import Component
    from .metrics import MultiProcessExporter

log = logging.getLogger("redismq.supervisor")
RESTART_DELAY_MIN = 0.1
RESTART_DELAY_MAX = 10.0
# A child that ran this long before exiting is restarted quickly again (no backoff).
STABLE_AFTER = 10.0
# How long a stopping supervisor waits for the brokers to free what its children left.
REAP_WAIT = 5.0
# How long a stopped worker process's exit may take before the process ends itself: Python's
# exit waits for every executor thread (asyncio.to_thread's too), and a job cancelled over
# its time limit can have left one running that never ends.
EXIT_WITHIN = 5.0


@dataclass(slots=True)
class WorkerOptions:
    """Everything a worker process needs to start (plain values only)."""

    app: str
    topics: tuple[str, ...] = ()
    group: str | None = None
    visibility_timeout: float = 30.0
    concurrency: int = 8
    burst: bool = False
    grace: float = 30.0
    log_level: str = "INFO"
    log_format: str = "text"
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    outbox: str | None = None  # a database URL whose outbox this worker relays


def run_worker(options: WorkerOptions, serve_metrics: bool = True) -> int:
    """Run one worker process in this process until it is stopped; returns the exit code.

    With a metrics port, the worker records Prometheus metrics and, unless a supervisor
    serves them (`serve_metrics=False`), serves them itself.
    """
    from .worker import EXIT_REPLACE, Worker

    setup_logging(options.log_level, options.log_format)
    app = load_app(options.app)
    app.client.ping()
    hooks: list[Any] = []
    components: list[Component] = []
    server = None
    if options.metrics_port is not None:
        from .metrics import LagCollector, Metrics, MetricsServer

        metrics = Metrics()
        own = [
            (s.topic, s.group)
            for s in app.subscriptions.values()
            if (not options.topics or s.topic in options.topics)
            and options.group in (None, s.group)
        ]
        hooks.append(metrics)
        components.append(LagCollector(app.client, metrics.queue_lag, own))
        if serve_metrics:
            server = MetricsServer(options.metrics_host, options.metrics_port)
    if options.outbox:
        from .outbox import OutboxRelay

        components.append(OutboxRelay(app.client, options.outbox, metrics=bool(hooks)))
    try:
        worker = Worker(
            app,
            topics=options.topics,
            group=options.group,
            visibility_timeout=options.visibility_timeout,
            concurrency=options.concurrency,
            burst=options.burst,
            grace=options.grace,
            hooks=hooks,
            components=components,
        )
    except RedisMQError as exc:  # e.g. a broker of its topics is down: one line, exit 1
        log.error("worker cannot start: %s", exc)
        if server is not None:
            server.close()
        return 1
    worker.install_signal_handlers()
    log.info(
        "worker %s consuming %s with %d threads each",
        worker.id,
        ", ".join(f"{s.topic}/{s.group}" for s in worker.subscriptions),
        options.concurrency,
    )
    # What start-up made (modules, the app, clients) lives as long as the process: left to
    # the collector, each full collection walks it all (10-20 ms with every thread held).
    gc.freeze()
    try:
        counts = worker.run()
    finally:
        if server is not None:
            server.close()
        flush_logs()  # the done lines still queued
    log.info(
        "worker %s stopped: %d done, %d failed (%d retried, %d dead-lettered)",
        worker.id,
        counts.processed,
        counts.failed,
        counts.retried,
        counts.dead,
    )
    return EXIT_REPLACE if worker.replaced and not worker.signalled else 0


def run_in_process(options: WorkerOptions) -> int:
    """`--processes 1`: run the worker in this process until it is stopped.

    When a sync job stuck past its time limit (or cancelled while running) forces the
    worker out (EXIT_REPLACE), the process starts again in place: the same command re-run
    by exec, with the same pid, so that the worker never goes away and a process manager
    sees no exit. (With more processes, the supervisor starts a new child instead.)
    """
    from .worker import EXIT_REPLACE

    code = run_worker(options)
    if code != EXIT_REPLACE:
        exit_within(EXIT_WITHIN, code)
        return code
    log.warning("restarting this worker process to leave a stuck job behind")
    flush_logs()
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])
    raise AssertionError("unreachable")


def run_pool(options: WorkerOptions, processes: int) -> int:
    """`--processes N`: run N worker processes, replacing any that dies, until stopped;
    returns the exit code."""
    setup_logging(options.log_level, options.log_format)
    return ending(Supervisor(options, processes).run())


def ending(code: int) -> int:
    """Make this process ready to exit with `code` (returned): what its log still queues
    written, waiting at most `FLUSH_TIMEOUT`, and an exit deadline armed. (A log nobody
    reads would hold the flush at exit, and so the exit, for good.)"""
    flush_logs()
    exit_within(EXIT_WITHIN, code)
    return code


def exit_within(seconds: float, code: int) -> None:
    """End this process with `code` in `seconds` unless its exit, under way, is over by then."""

    def deadline() -> None:
        time.sleep(seconds)
        say_at_once(f"exit still waiting for a thread after {seconds:g}s: exiting now")
        os._exit(code)

    threading.Thread(target=deadline, name="exit-deadline", daemon=True).start()


def _child(options: dict[str, Any], parent: int) -> None:
    die_with_parent(signal.SIGTERM, parent)
    code = run_worker(WorkerOptions(**options), serve_metrics=False)
    exit_within(EXIT_WITHIN, code)
    raise SystemExit(code)


class Supervisor:
    """Keeps `processes` worker processes running until it is told to stop."""

    def __init__(self, options: WorkerOptions, processes: int) -> None:
        self.options = options
        self.processes = processes
        self.children: list[multiprocessing.process.BaseProcess | None] = [None] * processes
        self.stopping = False
        self.forced = False
        self.signalled_with = 0  # the stop's signal (logged by the main loop, not the handler)
        self._context = multiprocessing.get_context("spawn")
        self._delay = [RESTART_DELAY_MIN] * processes
        self._started = [0.0] * processes
        self._restart_at: list[float | None] = [None] * processes
        self.exporter: MultiProcessExporter | None = None
        self.reaper: Reaper | None = None

    def run(self) -> int:
        """Supervise until stopped (or, in burst mode, until every child is done)."""
        self._install_signal_handlers()
        if self.options.metrics_port is not None:
            from .metrics import MultiProcessExporter

            # Before the first child starts: the children inherit its directory.
            self.exporter = MultiProcessExporter(
                self.options.metrics_host, self.options.metrics_port
            )
        try:
            return self._supervise()
        finally:
            if self.exporter is not None:
                self.exporter.close()

    def _supervise(self) -> int:
        self.reaper = self._make_reaper()
        self._start_all()
        while not self.stopping:
            if self.options.burst and all(c is not None and c.exitcode == 0 for c in self.children):
                return 0
            for slot, child in enumerate(self.children):
                if child is not None and child.exitcode is not None and not self.stopping:
                    self._replace(slot, child)
                due = self._restart_at[slot]
                if due is not None and time.monotonic() >= due and not self.stopping:
                    self._restart_at[slot] = None
                    self._start(slot)
            time.sleep(0.1)
        if self.signalled_with:
            log.info("signal %d: stopping %d worker processes", self.signalled_with, self.processes)
        return self._shutdown()

    def _start_all(self) -> None:
        for slot in range(self.processes):
            if self.stopping:  # a signal came meanwhile: start no more
                return
            self._start(slot)

    def _start(self, slot: int) -> None:
        options = asdict(self.options)
        options["outbox"] = self.options.outbox if slot == 0 else None  # one relay per pool
        child = self._context.Process(
            target=_child, args=(options, os.getpid()), name=f"worker-{slot}"
        )
        child.start()
        self.children[slot] = child
        self._started[slot] = time.monotonic()
        log.info("started worker process %d (pid %d)", slot, child.pid)
        if self.stopping:  # the signal came while it started: the handler did not see it
            self._signal(child, STOP_SIGNAL)

    def _replace(self, slot: int, child: multiprocessing.process.BaseProcess) -> None:
        if self.options.burst and child.exitcode == 0:
            return
        if time.monotonic() - self._started[slot] > STABLE_AFTER:
            self._delay[slot] = RESTART_DELAY_MIN
        log.warning(
            "worker process %d (pid %s) exited with %s; restarting in %.1fs",
            slot,
            child.pid,
            child.exitcode,
            self._delay[slot],
        )
        if self.exporter is not None and child.pid is not None:
            self.exporter.process_dead(child.pid)
        if child.pid is not None:
            threading.Thread(
                target=self._reap, args=(child.pid,), name="reaper", daemon=True
            ).start()
        self.children[slot] = None
        self._restart_at[slot] = time.monotonic() + self._delay[slot]
        self._delay[slot] = min(RESTART_DELAY_MAX, self._delay[slot] * 2)

    def _make_reaper(self) -> Reaper | None:
        try:
            app = load_app(self.options.app)
        except Exception as exc:  # the children report it: they load the same app
            log.warning("cannot free what dead worker processes leave: %s", exc)
            return None
        subs = [
            s
            for s in app.subscriptions.values()
            if (not self.options.topics or s.topic in self.options.topics)
            and self.options.group in (None, s.group)
        ]
        return Reaper(app.client, subs)

    def _reap(self, pid: int) -> None:
        """Free at once what a dead child held (instead of after the visibility timeout)."""
        if self.reaper is None:
            return
        try:
            retired = self.reaper.reap(pid)
        except Exception as exc:
            log.warning("could not free what worker process %d left: %s", pid, exc)
            return
        if retired.expired:
            log.info(
                "worker process %d held %d message(s): freed for the other consumers",
                pid,
                retired.expired,
            )

    def _install_signal_handlers(self) -> None:
        # The handler logs nothing: the code it interrupts may be writing to stderr.
        def handle(signum: int, frame: Any) -> None:
            if self.stopping:
                self.forced = True
                self._signal_children(signal.SIGKILL)
                return
            self.signalled_with = signum
            self.stopping = True
            # Not the signal itself: a child may have received that too (systemd,
            # `kill -TERM -PGID`), and would take a second one as "exit now".
            self._signal_children(STOP_SIGNAL)

        signal.signal(signal.SIGTERM, handle)
        signal.signal(signal.SIGINT, handle)

    def _signal_children(self, signum: int) -> None:
        for child in self.children:
            if child is not None:
                self._signal(child, signum)

    @staticmethod
    def _signal(child: multiprocessing.process.BaseProcess, signum: int) -> None:
        if child.pid and child.exitcode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signum)

    def _shutdown(self) -> int:
        deadline = time.monotonic() + self.options.grace + 5
        for child in self.children:
            if child is None:
                continue
            child.join(max(0.0, deadline - time.monotonic()))
            if child.exitcode is None:
                child.kill()
                child.join()
        self._reap_all()
        return 1 if self.forced else 0

    def _reap_all(self) -> None:
        """Free what the children left (a forced exit, a grace period that ran out) for
        other workers at once, waiting at most REAP_WAIT seconds for the brokers."""
        threads = [
            threading.Thread(target=self._reap, args=(c.pid,), name="reaper", daemon=True)
            for c in self.children
            if c is not None and c.pid is not None
        ]
        deadline = time.monotonic() + REAP_WAIT
        for t in threads:
            t.start()
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
