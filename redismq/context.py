"""The job being run in this thread or task, for handlers that want to know about it."""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass

from .message import Message

_current: ContextVar[JobContext | None] = ContextVar("redismq_current_job", default=None)


@dataclass(slots=True)
class JobContext:
    """What a running handler may ask about its job."""

    message: Message
    task: str | None

    @property
    def id(self) -> str:
        return self.message.id

    @property
    def attempt(self) -> int:
        return self.message.attempt


def current_job() -> JobContext:
    """The job the calling handler runs; raises RuntimeError outside a handler."""
    job = _current.get()
    if job is None:
        raise RuntimeError("current_job() is only available inside a running task or handler")
    return job


def set_current(job: JobContext | None) -> object:
    return _current.set(job)


def reset_current(token: object) -> None:
    _current.reset(token)  # type: ignore[arg-type]
