"""Background duties of a worker process, each a small component run on its own interval
by one housekeeping thread: lease renewal, time limits, trimming, heartbeats."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

from redismq import BrokerUnavailable, Client
from redismq.ordered import OrderedConsumer
from redismq.processing import Counts

if TYPE_CHECKING:
    from .worker import Loop, Worker

log = logging.getLogger("redismq.worker")
TICK = 0.1


class Component:
    """A duty done every `interval` seconds; `stop()` is called once at shutdown."""

    interval: float = 5.0

    def tick(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        """Called once when the worker stops."""


class Housekeeper:
    """Runs components on their intervals in one thread, isolating their failures."""

    def __init__(self, components: Sequence[Component]) -> None:
        self.components = list(components)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="housekeeping", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        for c in self.components:
            safely(c.stop)

    def _run(self) -> None:
        due = [0.0] * len(self.components)
        while not self._stop.is_set():
            now = time.monotonic()
            for i, c in enumerate(self.components):
                if now >= due[i]:
                    due[i] = now + c.interval
                    safely(c.tick)
            self._stop.wait(TICK)


def safely(fn: Callable[[], None]) -> None:
    """Run one step; log (never raise) what goes wrong."""
    try:
        fn()
    except BrokerUnavailable as exc:
        log.error("%s", exc)
    except Exception:
        log.exception("housekeeping step %s failed", getattr(fn, "__qualname__", fn))


class LeaseKeeper(Component):
    """Renews the leases of every message the loops hold, well before they expire."""

    def __init__(self, loops: Sequence[Loop], visibility_timeout: float) -> None:
        self.loops = loops
        self.interval = max(0.05, min(5.0, visibility_timeout / 3))

    def tick(self) -> None:
        for loop in self.loops:
            held = loop.held()
            if not held:
                continue
            lost = loop.consumer.renew(held)
            still = {m.entry_id for m in loop.held()}
            loop.consumer.lease_lost([m for m in lost if m.entry_id in still])


class Watchdog(Component):
    """Stops jobs that overrun their time limit.

    A sync handler cannot be interrupted safely, so its message is failed with
    TimeLimitExceeded, the rest of its batch handed back, and the process asked to be
    replaced (`on_stuck`).
    """

    interval = 0.1

    def __init__(self, loops: Sequence[Loop], on_stuck: Callable[[], None]) -> None:
        self.loops = loops
        self.on_stuck = on_stuck

    def tick(self) -> None:
        now = time.monotonic()
        for loop in self.loops:
            r = loop.runner.running
            if r is None or r.time_limit is None or now - r.started <= r.time_limit + 0.05:
                continue
            counts = Counts()
            if loop.runner.abandon(counts) is not None:
                loop.counts.add(counts)
                log.error(
                    "job %s (%s) exceeded its time limit of %ss: replacing this process",
                    r.message.id,
                    r.task,
                    r.time_limit,
                )
                self.on_stuck()


class Canceller(Component):
    """Stops running jobs that were cancelled: an async one is cancelled on its loop, a
    sync one is abandoned and the process asked to be replaced (`on_stuck`)."""

    interval = 0.5

    def __init__(self, loops: Sequence[Loop], on_stuck: Callable[[], None]) -> None:
        self.loops = loops
        self.on_stuck = on_stuck

    def tick(self) -> None:
        for loop in self.loops:
            r = loop.runner.running
            if r is None or not loop.consumer.cancelled([r.message]):
                continue
            counts = Counts()
            stopped = loop.runner.cancel_running(counts)
            loop.counts.add(counts)
            if stopped is not None and stopped.aio_task is None:
                log.warning(
                    "job %s was cancelled while running: replacing this process", r.message.id
                )
                self.on_stuck()


class Trimmer(Component):
    """Trims the consumed topics by their retention."""

    interval = 10.0

    def __init__(self, client: Client, topics: Iterable[str]) -> None:
        self.client = client
        self.topics = sorted(topics)

    def tick(self) -> None:
        for topic in self.topics:
            self.client.trim(topic)


class LeaseBalancer(Component):
    """Keeps the queue leases of ordered consumers: renews them, takes a fair share, marks
    extra ones to give back."""

    def __init__(self, loops: Sequence[Loop], visibility_timeout: float) -> None:
        self.loops = loops
        self.interval = max(0.05, visibility_timeout / 3)

    def tick(self) -> None:
        for loop in list(self.loops):
            if isinstance(loop.consumer, OrderedConsumer) and not loop.retired:
                loop.consumer.rebalance()


class RouteWatcher(Component):
    """Follows route changes: the worker starts consuming new queues without a restart."""

    interval = 2.0

    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    def tick(self) -> None:
        self.worker.refresh_routes()
