"""Async jobs side by side: one fetch thread fills all the slots of a subscription whose
jobs are coroutines (on one queue set), instead of a thread and an event loop per slot.

The fetch thread receives as many messages as there are free slots, runs the hooks and
starts each job's coroutine on the one event loop (its own thread), with the job's context
(`current_job()`, what the hooks set in context variables). As jobs end it records their
outcomes and settles them in the round trip of its next read. At concurrency 200 a wave of
jobs that end together is settled and replaced in a few calls, not in 200 threads' turns
at the GIL.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

from redismq import BrokerUnavailable, Consumer, Message, Subscription
from redismq.context import reset_current, set_current
from redismq.failures import task_frames
from redismq.handlers import EXITS, TimeLimitExceeded, as_failure, limited
from redismq.hooks import Hooks
from redismq.process import StopEvent
from redismq.processing import STARTED, BatchRunner, Call, Counts, Running

from .loop import Loop

log = logging.getLogger("redismq.worker")
# While jobs run, a read waits at most this long for new messages: jobs that ended
# meanwhile are settled with the next read.
WAIT_WHILE_BUSY = 0.1


def runs_async(subscription: Subscription) -> bool:
    """Whether a subscription runs coroutines: an async handler, or only async tasks (a
    sync task of another topic sent to it runs on the fetch thread, in turn)."""
    if subscription.ordered:
        return False
    if subscription.handler is not None:
        return asyncio.iscoroutinefunction(subscription.handler)
    return bool(subscription.tasks) and all(t.is_async for t in subscription.tasks.values())


# A job that ended: what it ran, its run, its context, its result and exception.
Ended = tuple[Call, Running, contextvars.Context, Any, BaseException | None]


class ConcurrentRunner(BatchRunner):
    """Starts coroutines side by side on one event loop, up to `slots` at once, and records
    their outcomes on the thread that receives (`collect`), which settles them."""

    def __init__(
        self, consumer: Consumer, subscription: Subscription, hooks: Sequence[Hooks], slots: int
    ) -> None:
        super().__init__(consumer, subscription, hooks)
        self.slots = slots
        self.wake = threading.Event()  # set when a job ends
        self._loop: asyncio.AbstractEventLoop | None = None  # made on first use
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._active: dict[int, tuple[Call, Running, contextvars.Context]] = {}
        self._ended: list[Ended] = []  # outcomes to record
        self._recording: list[Ended] = []  # being recorded now (still held)
        self._context = contextvars.Context()

    def run_one(self, msg: Message, counts: Counts) -> str | None:
        """Start one job, in a context of its own: what one job's hooks set in context
        variables neither reaches the next job's hooks nor is lost for its own after-hooks."""
        self._context = contextvars.copy_context()
        return self._context.run(super().run_one, msg, counts)

    def begin(self, call: Call) -> Running:
        running = super().begin(call)
        if asyncio.iscoroutinefunction(call.fn):  # from now on a cancel goes to its loop
            running.loop, running.thread = self._jobs_loop()
        return running

    def _jobs_loop(self) -> tuple[asyncio.AbstractEventLoop, int]:
        if self._loop is None or self._thread is None:
            self._loop = asyncio.new_event_loop()
            self._thread = threading.Thread(
                target=_run_forever, args=(self._loop,), name="jobs", daemon=True
            )
            self._thread.start()
        return self._loop, self._thread.ident or 0

    def call(self, call: Call, running: Running) -> Any:
        if running.loop is None:  # a sync task of another topic sent here: it runs now
            return call.fn(*call.args, **call.kwargs)
        context = self._context
        with self._lock:
            self._active[id(running)] = (call, running, context)
        # The coroutine runs with a copy of the job's context: current_job(), what the
        # hooks set.
        loop = running.loop
        loop.call_soon_threadsafe(self._create, loop, call, running, context.copy())
        return STARTED

    def _create(
        self,
        loop: asyncio.AbstractEventLoop,
        call: Call,
        running: Running,
        context: contextvars.Context,
    ) -> None:
        task = loop.create_task(self._job(call, running), context=context)
        running.aio_task = task
        task.add_done_callback(lambda t: self._end(running, *_outcome(t)))

    async def _job(self, call: Call, running: Running) -> Any:
        # (its body made here: a task cancelled before its first step leaves none behind)
        return await contained(self._body(call, running), running.time_limit)

    async def _body(self, call: Call, running: Running) -> Any:
        """The job's coroutine, unless it was given up before it could start (its loop
        was blocked past the job's time limit: it is failed, and retried elsewhere)."""
        with self._lock:
            if id(running) not in self._active:
                return None
        return await call.fn(*call.args, **call.kwargs)

    def _end(self, running: Running, result: Any, exc: BaseException | None) -> None:
        running.ended = time.monotonic()
        with self._lock:
            entry = self._active.pop(id(running), None)
            if entry is None:
                return  # given up already
            call, _, context = entry
            self._ended.append((call, running, context, result, exc))
        self.wake.set()

    def settling_due(self) -> bool:
        """Whether jobs ended and await their settle."""
        return bool(self._done)

    def busy(self) -> int:
        """How many jobs run or ended without their outcome recorded."""
        with self._lock:
            return len(self._active) + len(self._ended)

    def collect(self, counts: Counts) -> None:
        """Record the outcomes of the jobs that ended (settled with the next receive).

        A job whose recording met an unreachable broker stays, with the rest, for the next
        try; one whose hooks failed otherwise is logged and left to its lease."""
        with self._lock:
            self._recording, self._ended = self._ended, []
            self.wake.clear()
        while self._recording:
            call, running, context, result, exc = self._recording[0]
            try:
                context.run(self._record, call, running, result, exc, counts)
            except BrokerUnavailable:
                with self._lock:
                    self._ended[:0], self._recording = self._recording, []
                raise
            except Exception:
                log.exception("recording the outcome of job %s failed", running.message.id)
            with self._lock:
                self._recording.pop(0)

    def _record(
        self, call: Call, running: Running, result: Any, exc: BaseException | None, counts: Counts
    ) -> None:
        token = set_current(call.context)
        try:
            self.ended(call, running, result, exc, counts)
        finally:
            reset_current(token)

    def now_running(self) -> list[Running]:
        with self._lock:
            return [*super().now_running(), *(r for _, r, _ in self._active.values())]

    def held(self) -> list:
        with self._lock:
            mine = [r.message for _, r, _ in self._active.values()]
            mine += [r.message for _, r, _, _, _ in (*self._recording, *self._ended)]
        # (one being recorded may be in the done list already)
        return list({id(m): m for m in (*mine, *super().held())}.values())

    def abandon(
        self, counts: Counts, running: Running | None = None, cancelled: bool = False
    ) -> Running | None:
        """Give up on a coroutine past its time limit that its loop did not stop (the loop
        is blocked, or the job ignores its cancellation; called from another thread): the
        fetch thread records it as failed and goes on; the caller has the process
        replaced. A sync job stuck on the fetch thread is given up as BatchRunner does."""
        if running is None or running is self.running:
            return super().abandon(counts, running, cancelled)
        with self._lock:
            if id(running) not in self._active:
                return None
        self._end(running, None, _given_up(running))
        if running.loop is not None:  # once the loop runs again, the job stops
            running.loop.call_soon_threadsafe(running.cancel_task)
        return running

    def stop_loop(self) -> None:
        """Stop the event loop's thread (its jobs have ended, or been given up)."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(1.0)
        if not thread.is_alive():
            loop.close()


def _run_forever(loop: asyncio.AbstractEventLoop) -> None:
    """Run the jobs' loop until stopped; a SystemExit or KeyboardInterrupt that a job's
    inner task (its time limit's, or one it made) lets out of the loop does not end it:
    the task holds the exception, its job fails."""
    while True:
        try:
            loop.run_forever()
            break
        except (SystemExit, KeyboardInterrupt) as exc:
            log.error("a job raised %s out of its task: the loop goes on", type(exc).__name__)
    # Stopped with tasks left (jobs given up, their outcomes recorded or left to their
    # leases): cancel them, so that none is left pending, its coroutine never awaited.
    left = asyncio.all_tasks(loop)
    for task in left:
        task.cancel()
    with contextlib.suppress(BaseException):
        loop.run_until_complete(asyncio.gather(*left, return_exceptions=True))


async def contained(coro: Any, limit: float | None) -> Any:
    """Await a job's coroutine under its time limit; its SystemExit or KeyboardInterrupt
    fails the job instead of stopping the event loop that runs the others."""
    try:
        return await limited(coro, limit)
    except EXITS as exc:
        raise as_failure(exc) from exc


def _given_up(running: Running) -> BaseException:
    stuck = TimeLimitExceeded(
        f"job exceeded its time limit of {running.time_limit}s and its event loop did not "
        "stop it (does the coroutine call blocking code?)"
    )
    stack = running.stack()
    if stack:  # where the loop was when the job's time was up
        stuck.add_note(f"The event loop's thread was here:\n{stack.rstrip()}")
    return stuck


def _outcome(end: asyncio.Task) -> tuple[Any, BaseException | None]:
    """(result, exception) of an ended coroutine."""
    if end.cancelled():
        return None, asyncio.CancelledError()
    exc = end.exception()
    return (None, task_frames(exc)) if exc is not None else (end.result(), None)


class ConcurrentLoop(Loop):
    """The fetch thread of an async subscription's slots on one queue set."""

    def __init__(
        self, consumer: Consumer, subscription: Subscription, slots: int, hooks: Sequence[Hooks]
    ) -> None:
        self.runner: ConcurrentRunner = ConcurrentRunner(consumer, subscription, hooks, slots)
        super().__init__(consumer, subscription, slots, hooks, self.runner)

    def step(self, block: float, stopping: StopEvent) -> None:
        """Record what ended, then fill the free slots: receive that many (what ended
        settled in the same round trip) and start them; with none free, wait for one."""
        runner = self.runner
        runner.collect(self.counts)
        busy = runner.busy()
        self.idle = False
        if busy >= runner.slots:
            runner.wake.wait(block)
            return
        wait = min(block, WAIT_WHILE_BUSY) if busy or runner.settling_due() else block
        settle = runner.settling(self.counts)
        try:
            batch = self.consumer.receive(count=runner.slots - busy, block=wait, settle=settle)
        finally:
            runner.settle_over()
        if batch:
            marked = self.consumer.marks_running
            run = runner.run(batch, stop=stopping.is_set, marked=marked, settle_later=True)
            self.counts.add(run)
        self.idle = not batch and not busy

    def finish(self) -> None:
        """The thread ends: wait for the running jobs (a stop's grace bounds it), record
        and settle their outcomes, stop the event loop."""
        runner = self.runner
        try:
            while runner.busy():
                runner.wake.wait(0.1)
                with contextlib.suppress(BrokerUnavailable):  # tried again on the next pass
                    runner.collect(self.counts)
                    super().finish()  # settled as they end: the grace may run out
            super().finish()
        finally:
            runner.stop_loop()
