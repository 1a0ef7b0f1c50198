"""Calling a job's handler: a plain function on the calling thread, a coroutine function on
the thread's own event loop, cancelled at its time limit; and what a job raises to end its
program turned into a failure of the job."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .failures import task_frames

if TYPE_CHECKING:
    from .processing import Running


class TimeLimitExceeded(Exception):
    """A job ran longer than its task's time limit."""


# What a job raises to end a program, not itself (sys.exit, argparse on bad input): it fails
# the job instead of ending the thread or event loop that runs the others.
EXITS = (SystemExit, KeyboardInterrupt)


def as_failure(exc: BaseException) -> BaseException:
    """The error a job failed with, its traceback from the task's own frames down
    (`task_frames`): a SystemExit or KeyboardInterrupt as a RuntimeError caused by it, anything
    else as it is."""
    task_frames(exc)
    if not isinstance(exc, EXITS):
        return exc
    failure = RuntimeError(f"the job raised {type(exc).__name__}")
    failure.__cause__ = exc
    return failure


def call_handler(
    fn: Callable[..., Any], args: tuple, kwargs: dict, running: Running | None = None
) -> Any:
    """Call a handler; a coroutine function runs on this thread's loop, cancelled at the
    time limit (a sync handler's limit is enforced by the worker, which replaces it).

    `running`, if given, receives the asyncio task so that another thread can cancel it.
    """
    result = fn(*args, **kwargs)
    if result is None or not asyncio.iscoroutine(result):  # None spares an ABC isinstance
        return result
    limit = running.time_limit if running is not None else None
    loop = _loop()
    task = loop.create_task(limited(result, limit))
    if running is not None:
        running.loop, running.aio_task = loop, task
    return loop.run_until_complete(task)


async def limited(coro: Any, limit: float | None) -> Any:
    """Await a job's coroutine, cancelled at its time limit (TimeLimitExceeded)."""
    try:
        return await asyncio.wait_for(coro, limit)
    except TimeoutError:
        raise TimeLimitExceeded(f"async job exceeded its time limit of {limit}s") from None


_local = threading.local()


def _loop() -> asyncio.AbstractEventLoop:
    """This thread's event loop for async handlers, made on first use."""
    loop = getattr(_local, "loop", None)
    if loop is None or loop.is_closed():
        loop = _local.loop = asyncio.new_event_loop()
    return loop
