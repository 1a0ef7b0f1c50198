"""The named points of a worker's and a message's life that hooks (metrics, logs, the
app's middleware) run on."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .message import Message


class Hooks:
    """Named points of a worker's and a message's life; subclass and override what you need.

    The app's middleware (`redismq.Middleware`) runs on these points too.
    """

    def on_worker_start(self, worker: Any) -> None:
        """A worker process is about to fetch its first messages."""

    def on_worker_stop(self, worker: Any) -> None:
        """A worker process stopped fetching and its running jobs ended."""

    def before_process(self, msg: Message, task: str | None) -> None:
        """A handler is about to run (the job is `current_job()`)."""

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
        """A handler finished: outcome is done, retry, dead or cancelled (or lost: its
        failure was not recorded, because another consumer had taken the message over or
        its broker could not be reached: it runs again, here or there);
        `exc` is what it raised (None when done), `result` what it returned."""

    def after_settle(self, completed: int, duplicates: int) -> None:
        """Successes were acknowledged: `duplicates` had been completed before."""
