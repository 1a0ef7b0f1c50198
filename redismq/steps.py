"""Effect-once steps: a side effect inside a task that must not happen twice even though
the task may run twice (at-least-once delivery: a crash between the effect and the
acknowledgement runs it again).

    with current_job().once("smtp-send") as step:
        if step.needed:
            smtp.send(..., message_id=step.key)

The step is claimed atomically on the queue's broker before the effect (two live runs
cannot both get it) and marked done after it. The claim lives as long as the run's lease
on its message and is renewed with it; a run whose message was taken over by another
consumer gets `StepLost` from its next claim. The marks of a message live as long as it
can come back (pending, retrying, dead-lettered and replayed) and for the done window
after it finished.

What no lock can promise: a run paused past its lease between its claim and its effect,
or killed between its effect and the done mark, lets a later run do the effect again.
`step.key` is the answer: the same in every run of this message's step (and of a message
sent with the same dedup key, stored again under a new id), it is what the external side
checks (an SMTP Message-ID, a payment API's Idempotency-Key).
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from types import TracebackType
from typing import TYPE_CHECKING

from .errors import BrokerUnavailable, InvalidMessage, StepBusy, StepLost

if TYPE_CHECKING:
    from .consumer import Consumer
    from .message import Message

log = logging.getLogger("redismq.steps")
# How long past the visibility timeout a done mark is retried while its broker is away.
DONE_RETRY_EXTRA = 30.0


def step_key(topic: str, group: str, message_id: str, name: str, dedup_key: str | None) -> str:
    """The idempotency key of one step of one message in one group: 32 hex characters,
    the same in every run, and in every message sent with the same dedup key."""
    # A message id is hex: "dedup:" cannot begin one.
    identity = message_id if dedup_key is None else "dedup:" + dedup_key
    text = "\0".join((topic, group, identity, name))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


class Step:
    """One named effect-once step of a running job; `needed` says whether to do it, `key`
    is its stable idempotency key."""

    def __init__(self, consumer: Consumer | None, message: Message, name: str) -> None:
        if not name or not isinstance(name, str):
            raise InvalidMessage("a step needs a non-empty name")
        self.consumer = consumer
        self.message = message
        self.name = name
        group = consumer.group if consumer is not None else message.group
        self.key = step_key(message.topic, group, message.id, name, message.dedup_key)
        self.token = os.urandom(6).hex()
        self.needed = True
        self.lost = False
        self._claimed = False

    def __repr__(self) -> str:
        return f"Step({self.name!r}, key={self.key!r}, needed={self.needed})"

    def _call(self, action: str) -> object:
        consumer = self.consumer
        assert consumer is not None
        m = self.message
        q = consumer.queues[m.queue]
        k = q.keys
        stream = k.retry_stream(consumer.group) if m.from_retry else k.stream
        ttl = int(consumer.visibility_timeout * 1000)
        args = [action, self.name, consumer.group, consumer.name, m.entry_id, self.token, ttl]
        with consumer.errors():
            return q.broker.scripts.step(keys=[k.steps(consumer.group, m.id), stream], args=args)

    def __enter__(self) -> Step:
        if self.consumer is None:  # run outside a worker (tests, eager mode): no record
            return self
        self.message.stepped = True
        reply = self._call("claim")
        if isinstance(reply, list):  # [busy, ms the other claim has left]
            raise StepBusy(
                f"step {self.name!r} of job {self.message.id} is held by another run; "
                f"the job will be retried",
                retry_after=int(reply[1]) / 1000,
            )
        state = reply.decode() if isinstance(reply, bytes) else str(reply)
        if state == "lost":
            self.lost = True
            raise StepLost(
                f"job {self.message.id} was taken over by another consumer (its lease "
                f"expired): step {self.name!r} is left to the new run"
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
            self._call("release")

    def _mark_done(self) -> None:
        """Write the done mark, retrying while the broker is away (a failover): a lost mark
        would let a redelivery repeat the effect."""
        assert self.consumer is not None
        deadline = time.monotonic() + self.consumer.visibility_timeout + DONE_RETRY_EXTRA
        pause = 0.05
        while True:
            try:
                reply = self._call("done")
                break
            except BrokerUnavailable:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(pause)
                pause = min(1.0, pause * 2)
        if reply in (b"lost", "lost"):
            self.lost = True
            log.warning(
                "step %r of job %s was done after its lease was lost to another consumer "
                "(step.key %s fences the repeat)",
                self.name,
                self.message.id,
                self.key,
            )
