"""Running received messages through their handlers and settling the outcomes.

The hot path: a batch of messages runs one after the other; successes are acknowledged
together (one script call per queue), failures are retried or dead-lettered one by one.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .app import Subscription
from .consumer import NO_RESULT, Consumer, describe
from .context import JobContext, reset_current, set_current
from .errors import InvalidMessage, UnknownTask
from .message import Message

log = logging.getLogger("redismq.processing")
FLUSH_EVERY = 0.1


@dataclass(slots=True)
class Counts:
    """What happened to the messages of one or more batches."""

    processed: int = 0
    failed: int = 0
    retried: int = 0
    dead: int = 0
    duplicates: int = 0
    released: int = 0

    def add(self, other: Counts) -> None:
        for name in self.__slots__:
            setattr(self, name, getattr(self, name) + getattr(other, name))


def call_handler(fn: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
    """Call a handler; a coroutine function runs to completion on this thread's loop."""
    result = fn(*args, **kwargs)
    if asyncio.iscoroutine(result):
        return _loop().run_until_complete(result)
    return result


_local = threading.local()


def _loop() -> asyncio.AbstractEventLoop:
    """This thread's event loop for async handlers, made on first use."""
    loop = getattr(_local, "loop", None)
    if loop is None or loop.is_closed():
        loop = _local.loop = asyncio.new_event_loop()
    return loop


class BatchRunner:
    """Runs batches of one subscription's messages and settles their outcomes."""

    def __init__(self, consumer: Consumer, subscription: Subscription) -> None:
        self.consumer = consumer
        self.subscription = subscription
        self._done: list[Message] = []
        self._results: list[Any] = []
        self._batch: Sequence[Message] = ()
        self._pos = 0

    def run(self, messages: Sequence[Message], stop: Callable[[], bool] = lambda: False) -> Counts:
        """Run each message; when `stop()` turns true, hand the unstarted ones back."""
        counts = Counts()
        last_flush = time.monotonic()
        self._batch = messages
        for i, msg in enumerate(messages):
            self._pos = i
            if stop():
                rest = messages[i:]
                self._flush(counts)
                self.consumer.release(rest)
                counts.released += len(rest)
                break
            self.run_one(msg, counts)
            if time.monotonic() - last_flush > FLUSH_EVERY:
                self._flush(counts)
                last_flush = time.monotonic()
        self._flush(counts)
        self._batch = ()
        return counts

    def run_one(self, msg: Message, counts: Counts) -> None:
        sub = self.subscription
        try:
            fn, args, kwargs, task = sub.resolve(msg)
        except (InvalidMessage, UnknownTask) as exc:
            log.warning("dead-lettered %s at once: %s", msg.id, exc)
            self.consumer.dead_letter(msg, describe(exc), track=sub.handler is None)
            counts.dead += 1
            return
        token = set_current(JobContext(msg, task.name if task else None))
        started = time.perf_counter()
        try:
            result = call_handler(fn, args, kwargs)
        except Exception as exc:
            self._failed(msg, exc, task, counts, time.perf_counter() - started)
            return
        finally:
            reset_current(token)
        self._done.append(msg)
        self._results.append(result if task is not None else NO_RESULT)

    def _failed(self, msg: Message, exc: Exception, task: Any, counts: Counts, took: float) -> None:
        opts = self.subscription.options_for(task)
        self._flush(counts)
        outcome = self.consumer.retry(
            msg, exc, max_retries=opts.max_retries, backoff=opts.backoff, track=task is not None
        )
        counts.failed += 1
        if outcome == "dead":
            counts.dead += 1
        else:
            counts.retried += 1
        log.warning(
            "message %s (%s) attempt %d failed after %.3fs, %s: %s",
            msg.id,
            task.name if task else self.subscription.topic,
            msg.attempt + 1,
            took,
            "dead-lettered" if outcome == "dead" else "will retry",
            describe(exc),
        )

    def _flush(self, counts: Counts) -> None:
        if not self._done:
            return
        done, results = self._done, self._results
        self._done, self._results = [], []
        completed = self.consumer.ack_many(done, results)
        counts.processed += completed
        counts.duplicates += len(done) - completed

    def held(self) -> list[Message]:
        """Messages of the running batch not yet settled (their leases must stay fresh)."""
        return [*self._batch[self._pos :], *self._done]
