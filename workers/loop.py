"""One fetch-and-run thread of a worker: receive a batch, run it, settle it with the
next receive."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

from redismq import Consumer, Message, Subscription
from redismq.hooks import Hooks
from redismq.process import StopEvent
from redismq.processing import BatchRunner, Counts
from redismq.routing import Broker

# A fetch takes as many messages as this thread can start within about this many seconds,
# so that no message waits behind a long job while another worker idles.
BATCH_SECONDS = 0.05


class Loop:
    """One fetch-and-run thread of one subscription; knows what it holds.

    Its batch size follows the observed job duration: fast jobs are fetched in batches of
    up to `max_count`, slow ones one at a time.
    """

    def __init__(
        self,
        consumer: Consumer,
        subscription: Subscription,
        max_count: int,
        hooks: Sequence[Hooks],
        runner: BatchRunner | None = None,
    ) -> None:
        self.consumer = consumer
        # A task's job reads running from its receive on (one round trip with the check
        # for done and cancelled messages).
        consumer.marks_running = subscription.handler is None
        self.runner = runner or BatchRunner(consumer, subscription, hooks)
        self.max_count = max_count
        self.count = 1
        self.counts = Counts()
        self.idle = False
        # Set when routes changed and this loop's queues are no longer one broker's set.
        self.retired = False
        self.thread: threading.Thread | None = None

    @property
    def broker(self) -> Broker:
        """The broker of this loop's queues (one per loop)."""
        return next(iter(self.consumer.queues.values())).broker

    def held(self) -> list[Message]:
        """Messages this loop holds: its running batch and what its consumer kept."""
        return [*self.runner.held(), *self.consumer.kept()]

    def step(self, block: float, stopping: StopEvent) -> None:
        """Receive one batch and run it. What the last batch finished is settled in the
        receive's round trip (one call to Redis between one-at-a-time jobs, not two)."""
        settle = self.runner.settling(self.counts)
        try:
            batch = self.consumer.receive(count=self.count, block=block, settle=settle)
        finally:
            self.runner.settle_over()
        self.idle = not batch
        if not batch:
            return
        started = time.perf_counter()
        marked = self.consumer.marks_running
        run = self.runner.run(batch, stop=stopping.is_set, marked=marked, settle_later=True)
        self.counts.add(run)
        per_message = (time.perf_counter() - started) / len(batch)
        fits = int(BATCH_SECONDS / per_message) if per_message > 0 else self.max_count
        self.count = max(1, min(self.max_count, fits, self.count * 2))

    def finish(self) -> None:
        """The thread ends: settle what the last batch finished."""
        self.counts.add(self.runner.flush())
