"""Error types. Each carries a one-line message meant for a person."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .sending import Sent


class RedisMQError(Exception):
    """Base class of every error redismq raises on purpose.

    The error of a `send_many` that failed part-way has `sent`: where each message went, in
    the order given (None for one not known stored: send those again); that of a
    `Task.send_many` also has `jobs`, each run's job (None likewise).
    """

    sent: list[Sent | None] | None = None
    jobs: list[Any] | None = None


class InvalidURL(RedisMQError, ValueError):
    """A broker or meta URL that cannot be used."""


class BrokerUnavailable(RedisMQError, ConnectionError):
    """A broker could not be reached (after bounded retries)."""


class TopicNotFound(RedisMQError, LookupError):
    """A topic that does not exist was named where one must exist."""

    def __init__(self, topic: str) -> None:
        super().__init__(
            f"topic {topic!r} does not exist (create it with: redismq topic create {topic})"
        )
        self.topic = topic


class NotReplicated(RedisMQError):
    """A message stored on a master that no replica confirmed in time."""

    def __init__(self, message_id: str, broker: str, timeout_ms: int) -> None:
        super().__init__(
            f"message {message_id} is on the master of broker {broker!r} but no replica "
            f"confirmed it within {timeout_ms} ms (resending with the same dedup_key is safe)"
        )
        self.message_id = message_id


class QueueUnavailable(RedisMQError):
    """A keyed message's queue cannot take it (its broker is down or draining)."""


class TopicFull(RedisMQError):
    """A bounded topic had no room for the message (in time)."""


class StepBusy(RedisMQError):
    """Another live run of the same job holds an effect-once step (the job is retried once
    that claim can have lapsed: `retry_after` seconds)."""

    def __init__(self, text: str, retry_after: float | None = None) -> None:
        super().__init__(text)
        self.retry_after = retry_after


class StepLost(StepBusy):
    """The run no longer holds its message (its lease expired and another consumer took
    it over): it must stop; the new owner runs the job."""


class TopicExists(RedisMQError):
    """A topic was created again with a different shape."""


class InvalidMessage(RedisMQError, ValueError):
    """A body, option or stream entry that cannot be sent or decoded."""


class UnknownTask(RedisMQError, LookupError):
    """A message names a task the app does not have."""


class JobFailed(RedisMQError):
    """A job ended in failure; carries the remote exception's type, message and formatted
    traceback (which also ends the text of this error)."""

    def __init__(
        self, job_id: str, error_type: str, error: str, status: str = "dead", traceback: str = ""
    ) -> None:
        text = f"job {job_id} {status}: {error_type}: {error}"
        super().__init__(f"{text}\n\n{traceback}" if traceback else text)
        self.job_id = job_id
        self.error_type = error_type
        self.error = error
        self.status = status
        self.traceback = traceback


class JobNotFound(RedisMQError, LookupError):
    """No job has that id (never sent as a task, or its record expired)."""

    def __init__(self, job_id: str) -> None:
        super().__init__(
            f"no job with the id {job_id!r} (not a task's id, or its record expired after "
            f"the client's result_ttl)"
        )
        self.job_id = job_id


class ResultExpired(JobNotFound):
    """A job finished longer ago than the result_ttl: its result is gone."""

    def __init__(self, job_id: str) -> None:
        RedisMQError.__init__(
            self,
            f"the result of job {job_id!r} expired: it finished more than the client's "
            f"result_ttl ago",
        )
        self.job_id = job_id


class JobTimeout(RedisMQError, TimeoutError):
    """A job's result did not arrive in time."""


class ResultNotStorable(RedisMQError, ValueError):
    """A task returned a value that cannot be stored (not valid Unicode, or nested too
    deeply for JSON): the job fails with this reason, its batch is settled."""


class Retry(Exception):  # noqa: N818 - the name users raise: `raise redismq.Retry(delay=5)`
    """Raised by a task to be run again after `delay` seconds (None: the task's backoff).

    It counts as an attempt: once `max_retries` are spent the job is dead-lettered.
    """

    def __init__(self, delay: float | None = None) -> None:
        if delay is not None and (
            isinstance(delay, bool) or not isinstance(delay, int | float) or not delay >= 0
        ):
            raise InvalidMessage(f"Retry delay must be a number of seconds >= 0, not {delay!r}")
        super().__init__(
            "the task asked to be retried" + (f" in {delay:g}s" if delay is not None else "")
        )
        self.delay = delay
