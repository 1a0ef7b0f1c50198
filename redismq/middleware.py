"""Middleware: code of the app's own that runs around every job and in every worker process
(connection pools, error reporting, tracing), on the processing hooks."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Sequence
from typing import Any

from .context import JobContext, current_job_or_none
from .hooks import Hooks
from .message import Message

log = logging.getLogger("redismq.middleware")


class Middleware:
    """Override the hooks you need; each does nothing by default.

    `on_worker_start` runs in every worker process before its first job (open pools,
    initialise Sentry or OpenTelemetry there), `on_worker_stop` after its last one.
    `before_job(job)` and `after_job(job, result, error)` run in the job's thread around
    each attempt, with the same `job` (what `redismq.current_job()` returns); `error` is the
    exception the attempt raised (None on success), `result` what it returned. Coroutines
    of a topic whose tasks are all async run side by side on one event loop: there the
    hooks run on the thread that feeds the loop, and what `before_job` sets in context
    variables goes with the job's coroutine.

    An exception raised by `before_job` or `after_job` is logged and does not change the
    job's outcome; one raised by `on_worker_start` stops the worker.
    """

    def on_worker_start(self, worker: Any) -> None:
        """A worker process is about to fetch its first messages."""

    def on_worker_stop(self, worker: Any) -> None:
        """A worker process has stopped; its jobs have ended."""

    def before_job(self, job: JobContext) -> None:
        """An attempt of a job is about to run."""

    def after_job(self, job: JobContext, result: Any, error: BaseException | None) -> None:
        """An attempt of a job ended: it returned `result`, or raised `error`."""


class MiddlewareHooks(Hooks):
    """Runs an app's middleware on the processing hooks (in the order given; after_job in
    reverse)."""

    def __init__(self, middleware: Sequence[Middleware]) -> None:
        self.middleware = list(middleware)
        self._jobs: dict[tuple[str, str, str], JobContext] = {}
        self._lock = threading.Lock()

    def on_worker_start(self, worker: Any) -> None:
        for m in self.middleware:
            m.on_worker_start(worker)

    def on_worker_stop(self, worker: Any) -> None:
        for m in reversed(self.middleware):
            _safely(m.on_worker_stop, worker)

    def before_process(self, msg: Message, task: str | None) -> None:
        job = current_job_or_none()
        if job is None or job.message is not msg:
            job = JobContext(msg, task)
        with self._lock:
            self._jobs[(msg.topic, msg.group, msg.id)] = job
        for m in self.middleware:
            _safely(m.before_job, job)

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
        with self._lock:
            job = self._jobs.pop((msg.topic, msg.group, msg.id), None)
        if job is None:  # never started (an unknown task, a body that is not a task)
            return
        if outcome == "cancelled" and exc is None:
            exc = asyncio.CancelledError("the job was cancelled")
        for m in reversed(self.middleware):
            _safely(m.after_job, job, None if exc is not None else result, exc)


def _safely(hook: Any, *args: Any) -> None:
    try:
        hook(*args)
    except Exception:
        log.exception("middleware hook %s failed", getattr(hook, "__qualname__", hook))


def middleware_hooks(middleware: Sequence[Middleware]) -> list[Hooks]:
    """The hooks that run this middleware (none for none)."""
    return [MiddlewareHooks(middleware)] if middleware else []
