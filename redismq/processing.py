"""Running received messages through their handlers and settling the outcomes.

The hot path: a batch of messages runs one after the other; successes are acknowledged
together (one script call per queue), failures are retried or dead-lettered one by one.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from .app import Subscription
from .consumer import (
    CANCELLED,
    NO_RESULT,
    Consumer,
    Settled,
    Settling,
    describe,
    encode_outcome,
)
from .context import JobContext, reset_current, set_current
from .errors import (
    BrokerUnavailable,
    InvalidMessage,
    ResultNotStorable,
    Retry,
    StepBusy,
    StepLost,
    UnknownTask,
)
from .handlers import EXITS, TimeLimitExceeded, as_failure, call_handler
from .hooks import Hooks
from .job import mark_running
from .message import Message
from .tasks import Task

log = logging.getLogger("redismq.processing")
FLUSH_EVERY = 0.1
# What BatchRunner.call returns for a job it started and that runs on elsewhere.
STARTED = object()


@dataclass(slots=True)
class Counts:
    """What happened to the messages of one or more batches."""

    processed: int = 0
    failed: int = 0
    retried: int = 0
    dead: int = 0
    duplicates: int = 0
    released: int = 0
    cancelled: int = 0
    lost: int = 0  # dropped: another consumer took them over

    def add(self, other: Counts) -> None:
        for name in self.__slots__:
            setattr(self, name, getattr(self, name) + getattr(other, name))


@dataclass(slots=True)
class Running:
    """A message a runner is executing now."""

    message: Message
    task: str | None
    started: float
    time_limit: float | None
    loop: asyncio.AbstractEventLoop | None = None  # set for a coroutine: where it runs
    aio_task: asyncio.Task | None = None
    thread: int = field(default_factory=threading.get_ident)
    ended: float | None = None  # when a coroutine ended, if before its runner looked

    def stack(self) -> str:
        """Where the running handler's thread is now (for a job stuck past its limit)."""
        frame = sys._current_frames().get(self.thread)
        return "".join(traceback.format_stack(frame)) if frame is not None else ""

    def cancel_task(self) -> None:
        """Cancel the job's coroutine (call on its loop's thread)."""
        if self.aio_task is not None:
            self.aio_task.cancel()


@dataclass(slots=True)
class Call:
    """A message resolved to the callable it runs."""

    fn: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    task: Task | None
    context: JobContext


class LineWriter(Protocol):
    """Takes a done job's log line without a `logging` record (see `OutcomeLog.writer`)."""

    def done(self, logger: str, message_id: str, task: str, attempt: int, took: float) -> None:
        """Write (soon) the line OutcomeLog's record of a done job would give."""


class OutcomeLog(Hooks):
    """One line per outcome: done at INFO, failures at WARNING, with structured fields.

    Done lines go to `writer` when a worker process set one up (workers.logs: the same line
    without a `logging` record each, written in batches); failures are records, with their
    traceback.
    """

    writer: ClassVar[LineWriter | None] = None

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
        level = logging.INFO if outcome == "done" else logging.WARNING
        if not log.isEnabledFor(level):
            return
        name = task or f"{msg.topic}/{msg.group}"
        attempt, took = msg.attempt + 1, round(duration, 6)
        writer = OutcomeLog.writer
        if writer is not None and level == logging.INFO:
            writer.done(log.name, msg.id, name, attempt, took)
            return
        fields = {
            "id": msg.id,
            "task": name,
            "attempt": attempt,
            "duration": took,
            "outcome": outcome,
        }
        text = outcome_text(msg.id, name, attempt, took, outcome)
        # A failure's traceback follows the line (text) or is its "exception" field (JSON).
        log.log(
            level, "%s%s", text, f" error={error!r}" if error else "", extra=fields, exc_info=exc
        )


def outcome_text(message_id: str, task: str, attempt: int, took: float, outcome: str) -> str:
    """The message of a job's outcome line (its record's fields say the same)."""
    return f"id={message_id} {outcome_fields(task, attempt, took, outcome)}"


def outcome_fields(task: str, attempt: int, took: float, outcome: str) -> str:
    """What an outcome line says after the message id."""
    return f"task={task} attempt={attempt} duration={took} outcome={outcome}"


def retry_delay(exc: BaseException) -> float | None:
    """The delay a failure asks for: a `Retry`'s, or (a step held by another run) the
    time until that run's claim can have lapsed; None for the backoff."""
    if isinstance(exc, Retry):
        return exc.delay
    if isinstance(exc, StepBusy):
        return exc.retry_after
    return None


class BatchRunner:
    """Runs batches of one subscription's messages and settles their outcomes."""

    def __init__(
        self, consumer: Consumer, subscription: Subscription, hooks: Sequence[Hooks] = ()
    ) -> None:
        self.consumer = consumer
        self.subscription = subscription
        self.hooks = [OutcomeLog(), *hooks]
        self.running: Running | None = None
        self.abandoned = False
        self._done: list[Message] = []
        self._results: list[Any] = []
        self._batch: Sequence[Message] = ()
        self._pos = 0
        self._settling: Settling | None = None  # made by settling(), until settle_over()

    def run(
        self,
        messages: Sequence[Message],
        stop: Callable[[], bool] = lambda: False,
        *,
        marked: bool = False,
        settle_later: bool = False,
    ) -> Counts:
        """Run each message; when `stop()` turns true, hand the unstarted ones back.

        `marked`: the jobs read running already (the consumer marked them as it received
        them: `Consumer.marks_running`). `settle_later`: the jobs that finished last are
        left for `settling()` (held meanwhile), to settle with the next receive."""
        counts = Counts()
        self._batch, self._pos = messages, 0
        try:
            if not self._run(messages, stop, counts, marked):
                return counts  # abandoned: its thread was given up on
        except BaseException:
            # A broker lost mid-batch (a settle, a retry): what did not finish stays this
            # consumer's, received again first, instead of left to lapse and be charged an
            # attempt as if its worker had died (what finished is held until settled).
            finished = {id(m) for m in self._done}
            self.consumer.keep([m for m in messages[self._pos :] if id(m) not in finished])
            self._batch = ()
            raise
        if not settle_later:
            self._flush(counts)
        self._batch = ()
        return counts

    def _run(
        self, messages: Sequence[Message], stop: Callable[[], bool], counts: Counts, marked: bool
    ) -> bool:
        """`run`'s loop; False if it was abandoned."""
        last_flush = time.monotonic()
        if self.subscription.handler is None and not marked:  # tasks: they read running now
            # (settling, retrying and handing back take a job off the running set)
            mark_running(self.consumer, messages)
        for i, msg in enumerate(messages):
            self._pos = i
            if self.abandoned:
                return False
            if self.consumer.is_lost(msg):  # taken over by another consumer: not ours to run
                # Let go of it: hands it back if it is ours after all; an ordered consumer
                # stops counting it as fetched (its queue can change hands).
                self.consumer.release([msg])
                counts.lost += 1
                continue
            if stop():
                rest = messages[i:]
                self._flush(counts)
                self._hand_back(rest)
                counts.released += len(rest)
                if self.subscription.handler is None:  # handed back: queued again
                    mark_running(self.consumer, (), rest)
                break
            outcome = self.run_one(msg, counts)
            while outcome == "hold" and not self._hold(msg, stop):
                outcome = self.run_one(msg, counts)
            if outcome == "hold":  # stopped while holding: leave it and the rest pending
                self._flush(counts)
                self._hand_back(messages[i:])
                break
            self._pos = i + 1  # this one is finished: it is held only until it is settled
            if time.monotonic() - last_flush > FLUSH_EVERY:
                self._flush(counts)
                last_flush = time.monotonic()
        return True

    def settling(self, counts: Counts) -> Settling | None:
        """The finished jobs not settled yet, made ready to settle (None: there are none).
        As its calls run, their jobs are no longer held and `counts` counts what they did;
        what an unreachable broker left unsettled stays held, for the next one."""
        if not self._done:
            return None
        self._settling = self.consumer.settling(
            self._done, self._results, functools.partial(self._settled, counts)
        )
        return self._settling

    def settle_over(self) -> None:
        """The receive that took `settling()` returned or raised: what it did not settle
        (its broker could not be reached) is held again."""
        self._settling = None

    def _settled(self, counts: Counts, settled: Settled, messages: list[Message]) -> None:
        gone = {id(m) for m in messages}
        kept = [(m, r) for m, r in zip(self._done, self._results, strict=True) if id(m) not in gone]
        self._done, self._results = [m for m, _ in kept], [r for _, r in kept]
        self._account(settled, counts)

    def flush(self) -> Counts:
        """Settle the finished jobs not settled yet."""
        counts = Counts()
        self._flush(counts)
        return counts

    @staticmethod
    def _hold(msg: Message, stop: Callable[[], bool]) -> bool:
        """Wait before running a message again in place; True if stopped meanwhile."""
        deadline = time.monotonic() + msg.hold_for
        while time.monotonic() < deadline:
            if stop():
                return True
            time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
        return stop()

    def run_one(self, msg: Message, counts: Counts) -> str | None:
        """Run one message and settle or schedule its outcome: done, retry, hold (run it
        again in place: ordered groups), dead or cancelled; None if abandoned."""
        call = self.resolve(msg, counts)
        if isinstance(call, str):
            return call
        # The job stays current through the hooks, so that middleware sees it too.
        token = set_current(call.context)
        try:
            self.running = running = self.begin(call)
            try:
                result = self.call(call, running)
            except (asyncio.CancelledError, Exception, *EXITS) as exc:
                self.running = None
                return self.ended(call, running, None, as_failure(exc), counts)
            self.running = None
            if result is STARTED:
                return "started"
            return None if self.abandoned else self.ended(call, running, result, None, counts)
        finally:
            reset_current(token)

    def call(self, call: Call, running: Running) -> Any:
        """Run a job's callable (a coroutine on this thread's loop) and return its result;
        or start it elsewhere and return STARTED (its outcome is recorded when it ends)."""
        return call_handler(call.fn, call.args, call.kwargs, running)

    def resolve(self, msg: Message, counts: Counts) -> Call | str:
        """What the message runs; a body that names nothing runnable is dead-lettered
        (returns its outcome: dead, or lost)."""
        sub = self.subscription
        try:
            fn, args, kwargs, task = sub.resolve(msg)
        except (InvalidMessage, UnknownTask) as exc:
            if not self.consumer.dead_letter(msg, describe(exc), track=sub.handler is None):
                counts.lost += 1
                return "lost"
            counts.dead += 1
            self._after(msg, None, "dead", 0.0, describe(exc))
            return "dead"
        name = task.name if task else None
        return Call(fn, args, kwargs, task, JobContext(msg, name, self.consumer))

    def begin(self, call: Call) -> Running:
        """Run the hooks that go before a job (its context current) and start its clock."""
        msg, name = call.context.message, call.context.task
        for hook in self.hooks:
            hook.before_process(msg, name)
        limit = self.subscription.time_limit_for(call.task, msg)
        return Running(msg, name, time.monotonic(), limit)

    def ended(
        self,
        call: Call,
        running: Running,
        result: Any,
        exc: BaseException | None,
        counts: Counts,
    ) -> str:
        """Record what a job's run gave (its context current): done (settled with the
        batch), cancelled, lost, or a failure to retry or dead-letter."""
        msg, task, name = running.message, call.task, running.task
        took = (running.ended or time.monotonic()) - running.started
        if exc is None:
            try:
                stored = NO_RESULT if task is None else encode_outcome(result, msg.id)
            except ResultNotStorable as error:
                return self.fail(msg, error, task, counts, took)
            self._done.append(msg)
            self._results.append(stored)
            self._after(msg, name, "done", took, None, result=result)
            return "done"
        if isinstance(exc, asyncio.CancelledError):
            self._cancelled(msg, name, counts, took)
            return "cancelled"
        if isinstance(exc, StepLost):  # another consumer took the message over: theirs
            self.consumer.lease_lost([msg])
            counts.lost += 1
            self._after(msg, name, "lost", took, describe(exc), exc=exc)
            return "lost"
        return self.fail(msg, exc, task, counts, took)

    def fail(
        self, msg: Message, exc: BaseException, task: Task | None, counts: Counts, took: float
    ) -> str:
        """Retry a failed message (after the delay of a `Retry` it raised, else a backoff),
        or dead-letter it once its retries are spent or when its options say not to retry."""
        opts = self.subscription.options_for(task)
        name = task.name if task else None
        limit = opts.max_retries if opts.retries(exc) else msg.attempt
        with self._outcome_written(msg, name, took, exc):
            self._flush(counts)
            outcome = self.consumer.retry(
                msg,
                exc,
                delay=retry_delay(exc),
                max_retries=limit,
                backoff=opts.backoff,
                track=task is not None,
            )
        if outcome == "lost":
            counts.lost += 1
            self._after(msg, name, "lost", took, describe(exc), exc=exc)
            return outcome
        if task is not None and outcome != "hold":  # no longer running: retrying or dead
            mark_running(self.consumer, (), [msg])
        counts.failed += 1
        if outcome == "dead":
            counts.dead += 1
        else:
            counts.retried += 1
        reported = "retry" if outcome == "hold" else outcome
        self._after(msg, name, reported, took, describe(exc), exc=exc)
        return outcome

    @contextlib.contextmanager
    def _outcome_written(
        self, msg: Message, task: str | None, took: float, exc: BaseException | None = None
    ) -> Iterator[None]:
        """Where a run's outcome is written: when its broker cannot be reached, the hooks
        hear that the run ended, as lost (the message is kept and runs again, or is taken
        over: either way a run of its own for them)."""
        try:
            yield
        except BrokerUnavailable:
            self._after(msg, task, "lost", took, describe(exc) if exc else None, exc=exc)
            raise

    def _after(
        self,
        msg: Message,
        task: str | None,
        outcome: str,
        took: float,
        error: str | None,
        *,
        exc: BaseException | None = None,
        result: Any = None,
    ) -> None:
        for hook in self.hooks:
            hook.after_process(msg, task, outcome, took, error, exc=exc, result=result)

    def _flush(self, counts: Counts) -> None:
        if not self._done:
            return
        done, results = self._done, self._results
        self._done, self._results = [], []
        try:
            settled = self.consumer.settle_many(done, results)
        except BrokerUnavailable:
            # Keep them (their leases stay renewed): the next flush settles them once the
            # broker is back, instead of running them again after the visibility timeout.
            self._done[:0], self._results[:0] = done, results
            raise
        self._account(settled, counts)

    def _account(self, settled: Settled, counts: Counts) -> None:
        counts.processed += settled.completed
        counts.duplicates += settled.duplicates
        counts.lost += len(settled.lost)
        for hook in self.hooks:
            hook.after_settle(settled.completed, settled.duplicates)

    def _cancelled(self, msg: Message, task: str | None, counts: Counts, took: float) -> None:
        with self._outcome_written(msg, task, took):
            self._flush(counts)
            lost = bool(self.consumer.settle_many([msg], [CANCELLED]).lost)
        if lost:
            counts.lost += 1
        else:
            counts.cancelled += 1
        self._after(msg, task, "lost" if lost else "cancelled", took, None)

    def now_running(self) -> list[Running]:
        """The jobs running now (called from other threads)."""
        running = self.running
        return [] if running is None else [running]

    def cancel_running(self, counts: Counts, running: Running) -> Running | None:
        """Stop a running job because it was cancelled (called from another thread); None
        if it is no longer running.

        An async job is cancelled on its loop; a sync one is abandoned (see `abandon`).
        """
        if self.abandoned or not any(r is running for r in self.now_running()):
            return None
        if running.loop is not None:
            running.loop.call_soon_threadsafe(running.cancel_task)
            return running
        return self.abandon(counts, running, cancelled=True)

    def abandon(
        self, counts: Counts, running: Running | None = None, cancelled: bool = False
    ) -> Running | None:
        """Give up on the batch of a thread stuck in a handler (called from another thread);
        None if `running` (default: the running job) no longer runs.

        Settles what finished, fails the running message with TimeLimitExceeded (or settles
        it as cancelled), hands the unstarted rest back, and makes the stuck thread drop
        whatever it does next.
        """
        current = self.running
        if current is None or self.abandoned or (running is not None and running is not current):
            return None
        self.abandoned = True
        rest = list(self._batch[self._pos + 1 :])
        try:
            self._flush(counts)
            self._give_up(current, counts, cancelled)
            self._hand_back(rest)
            counts.released += len(rest)
        except BrokerUnavailable as exc:
            # Given up all the same (the process is to be replaced): what could not be
            # settled stays pending and is taken over once its lease lapses.
            log.error(
                "%s: job %s and the rest of its batch are left to lapse", exc, current.message.id
            )
        self._batch = ()
        return current

    def _give_up(self, running: Running, counts: Counts, cancelled: bool) -> None:
        """Settle an abandoned job: as cancelled, or failed with TimeLimitExceeded."""
        took = time.monotonic() - running.started
        if cancelled:
            self._cancelled(running.message, running.task, counts, took)
            return
        task = self.subscription.find_task(running.task)
        exc = TimeLimitExceeded(f"job exceeded its time limit of {running.time_limit}s")
        stack = running.stack()
        if stack:  # its traceback: where the job was when its time was up
            exc.add_note(f"The job's thread was here:\n{stack.rstrip()}")
        self.fail(running.message, exc, task, counts, took)

    def _hand_back(self, messages: Sequence[Message]) -> None:
        """Release unstarted messages; their jobs no longer read running."""
        self.consumer.release(messages)
        if self.subscription.handler is None and messages:
            mark_running(self.consumer, (), messages)

    def held(self) -> list[Message]:
        """Messages of the running batch not yet settled (their leases must stay fresh);
        not those of a settle on its way (a renewal crossing it would report them lost)."""
        done = self._done if self._settling is None else []
        return [*self._batch[self._pos :], *done]
