"""Stopping running jobs: those over their time limit and those cancelled."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from redismq.outcomes import grouped
from redismq.processing import Counts, Running

from .housekeeping import Component

if TYPE_CHECKING:
    from .loop import Loop

log = logging.getLogger("redismq.worker")


class Watchdog(Component):
    """Stops jobs that overrun their time limit.

    A sync handler cannot be interrupted safely, so its message is failed with
    TimeLimitExceeded, the rest of its batch handed back, and the process asked to be
    replaced (`on_stuck`).
    """

    interval = 0.1
    # An async job's limit is its loop's to enforce: past this much more, its loop is
    # blocked (a coroutine that calls blocking code) or the job ignores its cancellation.
    async_margin = 1.0

    def __init__(self, loops: Sequence[Loop], on_stuck: Callable[[], None]) -> None:
        self.loops = loops
        self.on_stuck = on_stuck

    def tick(self) -> None:
        now = time.monotonic()
        for loop in self.loops:
            for r in loop.runner.now_running():
                if r.time_limit is not None and now - r.started > r.time_limit + self._margin(r):
                    self._stop(loop, r)

    def _margin(self, r: Running) -> float:
        return 0.05 if r.loop is None else self.async_margin

    def _stop(self, loop: Loop, r: Running) -> None:
        counts = Counts()
        if loop.runner.abandon(counts, r) is None:  # it finished meanwhile
            return
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
        running = [(loop, r) for loop in self.loops for r in loop.runner.now_running()]
        # One look per consumer set (a topic's queues on this broker), not one per loop.
        by_set = grouped(running, lambda lr: (lr[0].consumer.topic.name, *lr[0].consumer.queues))
        for pairs in by_set.values():
            gone = {m.id for m in pairs[0][0].consumer.cancelled([r.message for _, r in pairs])}
            for loop, r in pairs:
                if r.message.id in gone:
                    self._stop(loop, r)

    def _stop(self, loop: Loop, r: Running) -> None:
        counts = Counts()
        stopped = loop.runner.cancel_running(counts, r)  # None: it finished meanwhile
        loop.counts.add(counts)
        if stopped is not None and stopped.loop is None:
            log.warning("job %s was cancelled while running: replacing this process", r.message.id)
            self.on_stuck()
