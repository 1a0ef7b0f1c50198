"""Effect-once steps: a side effect inside a task that must not happen twice even though
the task may run twice (at-least-once delivery: a crash between the effect and the
acknowledgement runs it again).

    with current_job().once("smtp-send") as step:
        if step.needed:
            smtp.send(...)

The step is claimed atomically on the queue's broker before the effect (two concurrent runs
cannot both get it) and marked done after it; a claim whose run died is released when it
expires after the visibility timeout. What it cannot promise: if the process dies after the
effect and before the done mark is written, the next run does the effect again.
"""

from __future__ import annotations

import os
import time
from types import TracebackType
from typing import TYPE_CHECKING

from .errors import BrokerUnavailable, InvalidMessage, StepBusy

if TYPE_CHECKING:
    from .consumer import Consumer
    from .message import Message

# How long past the visibility timeout a done mark is retried while its broker is away.
DONE_RETRY_EXTRA = 30.0


class Step:
    """One named effect-once step of a running job; `needed` says whether to do it."""

    def __init__(self, consumer: Consumer | None, message: Message, name: str) -> None:
        if not name or not isinstance(name, str):
            raise InvalidMessage("a step needs a non-empty name")
        self.consumer = consumer
        self.message = message
        self.name = name
        self.owner = f"{consumer.name if consumer else 'local'}:{os.urandom(6).hex()}"
        self.needed = True
        self._claimed = False

    def _call(self, action: str, ttl_ms: int) -> object:
        consumer = self.consumer
        assert consumer is not None
        q = consumer.queues[self.message.queue]
        key = q.keys.step(consumer.group, self.message.id, self.name)
        with consumer.errors():
            return q.broker.scripts.step(keys=[key], args=[action, self.owner, ttl_ms])

    def __enter__(self) -> Step:
        if self.consumer is None:  # run outside a worker (tests, eager mode): no record
            return self
        ttl = int(self.consumer.visibility_timeout * 1000)
        reply = self._call("claim", ttl)
        state = reply.decode() if isinstance(reply, bytes) else str(reply)
        if state == "busy":
            raise StepBusy(
                f"step {self.name!r} of job {self.message.id} is held by another run; "
                f"the job will be retried"
            )
        self.needed = state == "claimed"
        self._claimed = self.needed
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self._claimed or self.consumer is None:
            return
        if exc_type is None:
            self._mark_done()
        else:
            self._call("release", 0)

    def _mark_done(self) -> None:
        """Write the done mark, retrying while the broker is away (a failover): a lost mark
        would let a redelivery repeat the effect."""
        assert self.consumer is not None
        deadline = time.monotonic() + self.consumer.visibility_timeout + DONE_RETRY_EXTRA
        pause = 0.05
        while True:
            try:
                self._call("done", self.consumer.client.done_ttl_ms)
                return
            except BrokerUnavailable:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(pause)
                pause = min(1.0, pause * 2)
