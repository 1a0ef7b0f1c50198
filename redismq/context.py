"""The job being run in this thread or task, for handlers that want to know about it."""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar, Token
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .message import Message
from .steps import Step

if TYPE_CHECKING:
    from .consumer import Consumer

_current: ContextVar[JobContext | None] = ContextVar("redismq_current_job", default=None)


@dataclass(slots=True)
class JobContext:
    """What a running handler may ask about its job."""

    message: Message
    task: str | None
    consumer: Consumer | None = None

    @property
    def id(self) -> str:
        return self.message.id

    @property
    def attempt(self) -> int:
        return self.message.attempt

    def once(self, name: str) -> Step:
        """An effect-once step of this job (a context manager; see redismq.steps)."""
        return Step(self.consumer, self.message, name)

    def set_progress(self, fraction: float, text: str = "") -> None:
        """Record how far the job is (0.0 to 1.0) and a short note; `job.progress()` reads it."""
        if self.consumer is None:
            return
        self.consumer.set_progress(self.message, fraction, text)


def current_job() -> JobContext:
    """The job the calling handler runs; raises RuntimeError outside a handler."""
    job = _current.get()
    if job is None:
        raise RuntimeError("current_job() is only available inside a running task or handler")
    return job


def current_job_or_none() -> JobContext | None:
    """The job the calling handler runs, or None outside a handler."""
    return _current.get()


# Make `job` the current one (returns the token that resets it), and reset it.
set_current: Callable[[JobContext | None], Token[JobContext | None]] = _current.set
reset_current: Callable[[Token[JobContext | None]], None] = _current.reset
