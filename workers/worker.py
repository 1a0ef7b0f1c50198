"""One worker process: fetch-and-run threads per subscription, plus the housekeeping
components (lease keeper, time-limit watchdog, trimmer, heartbeat, scheduler)."""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

from redismq import App, BrokerUnavailable, Consumer, Subscription
from redismq.processing import BatchRunner, Counts, Hooks

from .heartbeat import Heartbeat
from .housekeeping import (
    Canceller,
    Component,
    Housekeeper,
    LeaseBalancer,
    LeaseKeeper,
    Trimmer,
    Watchdog,
    safely,
)
from .scheduler import Scheduler

log = logging.getLogger("redismq.worker")
RECONNECT_MAX = 5.0
# Exit code of a process that had to give up a thread stuck past its time limit: the
# supervisor replaces it.
EXIT_REPLACE = 3
# A fetch takes as many messages as this thread can start within about this many seconds,
# so that no message waits behind a long job while another worker idles.
BATCH_SECONDS = 0.05


class Loop:
    """One fetch-and-run thread of one subscription; knows what it holds.

    Its batch size follows the observed job duration: fast jobs are fetched in batches of
    up to `max_count`, slow ones one at a time.
    """

    def __init__(
        self, consumer: Consumer, subscription: Subscription, max_count: int, hooks: Sequence[Hooks]
    ) -> None:
        self.consumer = consumer
        self.runner = BatchRunner(consumer, subscription, hooks)
        self.max_count = max_count
        self.count = 1
        self.counts = Counts()
        self.idle = False

    def step(self, block: float, stopping: threading.Event) -> None:
        """Receive one batch and run it."""
        batch = self.consumer.receive(count=self.count, block=block)
        self.idle = not batch
        if not batch:
            return
        started = time.perf_counter()
        self.counts.add(self.runner.run(batch, stop=stopping.is_set))
        per_message = (time.perf_counter() - started) / len(batch)
        fits = int(BATCH_SECONDS / per_message) if per_message > 0 else self.max_count
        self.count = max(1, min(self.max_count, fits, self.count * 2))


def keys(subs: Iterable[Subscription]) -> set[tuple[str, str]]:
    return {(s.topic, s.group) for s in subs}


class Worker:
    """Consumes an app's subscriptions in one process until stopped (or idle, in burst mode)."""

    def __init__(
        self,
        app: App,
        *,
        topics: Iterable[str] | None = None,
        group: str | None = None,
        visibility_timeout: float = 30.0,
        concurrency: int = 1,
        count: int = 100,
        block: float = 1.0,
        burst: bool = False,
        grace: float = 30.0,
        hooks: Sequence[Hooks] = (),
        components: Sequence[Component] = (),
    ) -> None:
        wanted = set(topics or [])
        subs = [
            s
            for s in app.subscriptions.values()
            if (not wanted or s.topic in wanted) and (group is None or s.group == group)
        ]
        if not subs:
            raise ValueError("the app has no task or handler for the chosen topics and group")
        self.app = app
        self.subscriptions = subs
        self.client = app.client
        self.burst = burst
        self.block = block
        self.grace = grace
        self.replaced = False
        self.stopping = threading.Event()
        self.id = f"{socket.gethostname()}:{os.getpid()}"
        self.loops = [
            Loop(
                self.client.consumer(
                    s.topic,
                    s.group,
                    visibility_timeout=visibility_timeout,
                    queues=queues,
                    ordered=s.ordered,
                ),
                s,
                count,
                hooks,
            )
            for s in subs
            for queues in self._queues_by_broker(s.topic)
            for _ in range(concurrency)
        ]
        heartbeat = Heartbeat(
            self.client,
            self.id,
            self,
            {
                "app": getattr(app, "name", ""),
                "topics": sorted({s.topic for s in subs}),
                "groups": sorted({s.group for s in subs}),
                "concurrency": concurrency,
            },
        )
        periodics = [p for p in app.periodics if (p.task.topic, p.task.group) in keys(subs)]
        self.housekeeper = Housekeeper(
            [
                LeaseKeeper(self.loops, visibility_timeout),
                LeaseBalancer(self.loops, visibility_timeout),
                Watchdog(self.loops, self._replace),
                Canceller(self.loops, self._replace),
                Trimmer(self.client, {s.topic for s in subs}),
                heartbeat,
                *([Scheduler(self.client, periodics)] if periodics else []),
                *components,
            ]
        )

    def _queues_by_broker(self, topic: str) -> list[list[int]]:
        """The topic's queue numbers grouped by broker: each group gets its own fetch
        threads, so that every broker has a blocking read of its own."""
        t = self.client.topic(topic, create=True)
        groups: dict[str, list[int]] = {}
        for q, broker in enumerate(t.placement):
            groups.setdefault(broker, []).append(q)
        return list(groups.values())

    @property
    def counts(self) -> Counts:
        total = Counts()
        for loop in self.loops:
            total.add(loop.counts)
        return total

    def in_flight(self) -> list[str]:
        """Ids of the messages this process holds now."""
        return [m.id for loop in self.loops for m in loop.runner.held()]

    def run(self) -> Counts:
        """Run until stop() (or, in burst mode, until nothing is left); returns the counts."""
        threads = [
            threading.Thread(target=self._fetch, args=(loop,), name=f"fetch-{i}", daemon=True)
            for i, loop in enumerate(self.loops)
        ]
        self.housekeeper.start()
        for t in threads:
            t.start()
        try:
            self._join(threads)
        finally:
            self.stopping.set()
            self.housekeeper.stop()
            for loop in self.loops:
                safely(loop.consumer.close)
        return self.counts

    def _join(self, threads: list[threading.Thread]) -> None:
        """Wait for the fetch threads; after a stop, at most `grace` seconds more."""
        deadline = None
        for t, loop in zip(threads, self.loops, strict=True):
            while t.is_alive() and not loop.runner.abandoned:
                if deadline is None and self.stopping.is_set():
                    deadline = time.monotonic() + self.grace
                if deadline is not None and time.monotonic() > deadline:
                    log.warning("grace period over: leaving unfinished jobs to lease expiry")
                    return
                t.join(0.1)

    def stop(self) -> None:
        """Stop fetching; running messages finish, fetched unstarted ones are handed back."""
        self.stopping.set()

    def _replace(self) -> None:
        """A thread is stuck past a time limit: stop, so the supervisor starts a fresh process."""
        self.replaced = True
        self.stop()

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT stop gracefully; a second one exits at once (leases then expire)."""

        def handle(signum: int, frame: Any) -> None:
            if self.stopping.is_set():
                log.warning("second signal: exiting now")
                os._exit(1)
            log.info("signal %d: finishing running work, then exiting", signum)
            self.stop()

        signal.signal(signal.SIGTERM, handle)
        signal.signal(signal.SIGINT, handle)

    def _fetch(self, loop: Loop) -> None:
        pause = 0.1
        while not self.stopping.is_set():
            try:
                loop.step(self.block, self.stopping)
                if self.burst and loop.idle and loop.consumer.backlog() == 0:
                    return
                pause = 0.1
            except BrokerUnavailable as exc:
                log.error("%s (retrying in %.1fs)", exc, pause)
                self.stopping.wait(pause)
                pause = min(RECONNECT_MAX, pause * 2)
            except Exception:
                log.exception("unexpected error in the fetch loop of %s", loop.consumer)
                self.stopping.wait(1.0)
