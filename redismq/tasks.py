"""Tasks: functions registered on an app, and how a send of one is made (its body, the
check of its arguments, its delay) and how its failures are treated."""

from __future__ import annotations

import asyncio
import inspect
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from .arguments import encode_arguments
from .client import Sent
from .errors import InvalidMessage, RedisMQError, Retry
from .job import AsyncJob, Job
from .message import now_ms

if TYPE_CHECKING:
    from .app import App

# The header that carries a per-send time limit (seconds) to the worker.
TIME_LIMIT_HEADER = "redismq-time-limit"
DEFAULT_TOPIC = "tasks"
DEFAULT_GROUP = "workers"
# Call shapes kept per task (a function taking **kwargs may be sent with any names).
MAX_SHAPES = 64


ExceptionTypes = tuple[type[BaseException], ...]


@dataclass(slots=True)
class Options:
    """How failures of a task or handler are treated."""

    max_retries: int = 3
    backoff: float = 1.0
    time_limit: float | None = None
    retry_for: ExceptionTypes | None = None
    dont_retry_for: ExceptionTypes = ()

    def retries(self, exc: BaseException) -> bool:
        """Whether a failure with this exception may be retried (`Retry` always may)."""
        if isinstance(exc, Retry):
            return True
        if isinstance(exc, self.dont_retry_for):
            return False
        return self.retry_for is None or isinstance(exc, self.retry_for)


def exception_types(what: str, value: Any) -> ExceptionTypes:
    """An exception class or a tuple of them, as a tuple; raises RedisMQError otherwise."""
    types = value if isinstance(value, tuple | list) else (value,)
    if not all(isinstance(t, type) and issubclass(t, BaseException) for t in types):
        raise RedisMQError(
            f"{what} must be exception types (e.g. (ConnectionError,)), not {value!r}"
        )
    return tuple(types)


def make_options(
    max_retries: int,
    backoff: float,
    time_limit: float | None,
    retry_for: Any = None,
    dont_retry_for: Any = (),
) -> Options:
    """Checked failure options of a task or handler."""
    return Options(
        max_retries,
        backoff,
        time_limit,
        None if retry_for is None else exception_types("retry_for", retry_for),
        exception_types("dont_retry_for", dont_retry_for),
    )


class Task:
    """A function registered as a task: call `.send()` to run it on a worker."""

    def __init__(
        self, app: App, fn: Callable[..., Any], name: str, topic: str, group: str, options: Options
    ) -> None:
        self.app = app
        self.fn = fn
        self.name = name
        self.topic = topic
        self.group = group
        self.options = options
        self.is_async = asyncio.iscoroutinefunction(fn)
        self._signature = signature_of(fn)
        # Call shapes (positional count, keyword names) the function takes: whether a call
        # binds depends on nothing else, so each shape is checked once.
        self._fitting: set[tuple[int, tuple[str, ...]]] = set()
        self.__doc__ = fn.__doc__
        self.__name__ = getattr(fn, "__name__", name)

    def __repr__(self) -> str:
        return f"Task({self.name!r}, topic={self.topic!r}, group={self.group!r})"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run the function here and now (not through the queue)."""
        return self.fn(*args, **kwargs)

    def send(self, *args: Any, **kwargs: Any) -> Job:
        """Queue a run of the task with these arguments."""
        return self.send_with_options(args=args, kwargs=kwargs)

    async def send_async(self, *args: Any, **kwargs: Any) -> AsyncJob:
        """Queue a run of the task with these arguments from async code (no blocking I/O);
        the job's methods are awaited."""
        return await self.send_with_options_async(args=args, kwargs=kwargs)

    async def send_with_options_async(
        self,
        args: tuple[Any, ...] | list[Any] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        delay: float | timedelta | None = None,
        eta: datetime | None = None,
        key: str | None = None,
        dedup_key: str | None = None,
        headers: dict[str, str] | None = None,
        topic: str | None = None,
        time_limit: float | None = None,
        durability: str | None = None,
        timeout: float | None = None,
    ) -> AsyncJob:
        """`send_with_options` for async code (no blocking I/O); the job's methods are
        awaited."""
        to, body, send = self._message(args, kwargs, delay, eta, topic, time_limit, headers)
        sent = await self.app.async_client.send_message(
            to, body, key=key, dedup_key=dedup_key, durability=durability, timeout=timeout, **send
        )
        return self._async_job(sent)

    def send_with_options(
        self,
        args: tuple[Any, ...] | list[Any] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        delay: float | timedelta | None = None,
        eta: datetime | None = None,
        key: str | None = None,
        dedup_key: str | None = None,
        headers: dict[str, str] | None = None,
        topic: str | None = None,
        time_limit: float | None = None,
        durability: str | None = None,
        timeout: float | None = None,
    ) -> Job:
        """Queue a run with options for this send only.

        `delay` (seconds) or `eta` (a datetime; naive means UTC): it runs then, never
        before (by the workers' clocks); `key`: the ordering key; `dedup_key`: a resend
        within the window is a no-op that returns the first job; `headers`; `topic`:
        another topic than the task's (some task or handler of the app must be on it, so
        that its workers run this one too); `time_limit`: seconds, instead of the task's;
        `durability`: "master" or "replicated" (wait for a replica); `timeout`: how long
        the send waits for its broker (default: the client's `send_timeout`) and for room
        in a full topic.
        """
        to, body, send = self._message(args, kwargs, delay, eta, topic, time_limit, headers)
        sent = self.app.client.send_message(
            to, body, key=key, dedup_key=dedup_key, durability=durability, timeout=timeout, **send
        )
        return self._job(sent)

    def send_many(
        self,
        runs: Iterable[tuple[Any, ...] | list[Any] | dict[str, Any]],
        *,
        headers: dict[str, str] | None = None,
        durability: str | None = None,
        timeout: float | None = None,
    ) -> list[Job]:
        """Queue many runs of the task at once, one per item of `runs`: its positional
        arguments (a tuple or list) or its keyword arguments (a dict).

        They go round-robin over the task's topic in one pipeline per broker, as
        `Client.send_many` (the same outage rules, `timeout` and `durability`); every run's
        arguments are checked before any is sent. Returns their jobs, in order; an error
        part-way has `jobs`, each run's job (None for one not known stored)."""
        bodies = self._bodies(runs)
        try:
            sent = self.app.client.send_many_messages(
                self.topic,
                bodies,
                headers=headers,
                durability=durability,
                timeout=timeout,
                index_as=(self.group, self.name),
            )
        except RedisMQError as exc:
            raise stopped_jobs(exc, self._job) from None
        return [self._job(s) for s in sent]

    async def send_many_async(
        self,
        runs: Iterable[tuple[Any, ...] | list[Any] | dict[str, Any]],
        *,
        headers: dict[str, str] | None = None,
        durability: str | None = None,
        timeout: float | None = None,
    ) -> list[AsyncJob]:
        """`send_many` for async code (no blocking I/O); the jobs' methods are awaited."""
        bodies = self._bodies(runs)
        try:
            sent = await self.app.async_client.send_many_messages(
                self.topic,
                bodies,
                headers=headers,
                durability=durability,
                timeout=timeout,
                index_as=(self.group, self.name),
            )
        except RedisMQError as exc:
            raise stopped_jobs(exc, self._async_job) from None
        return [self._async_job(s) for s in sent]

    def _bodies(self, runs: Iterable[Any]) -> list[dict[str, Any]]:
        """The message bodies of many runs (see `send_many`), all checked."""
        if isinstance(runs, str | bytes | dict) or not isinstance(runs, Iterable):
            raise InvalidMessage(
                f"cannot send {self.name}: runs must be an iterable of runs, not {runs!r}"
            )
        bodies = []
        for run in runs:
            if isinstance(run, tuple | list):
                bodies.append(self.body(run))
            elif isinstance(run, dict):
                bodies.append(self.body((), run))
            else:
                raise InvalidMessage(
                    f"cannot send {self.name}: each run is its positional arguments (a tuple "
                    f"or list) or its keyword arguments (a dict), not {run!r}"
                )
        return bodies

    def _message(
        self,
        args: tuple[Any, ...] | list[Any],
        kwargs: dict[str, Any] | None,
        delay: float | timedelta | None,
        eta: datetime | None,
        topic: str | None,
        time_limit: float | None,
        headers: dict[str, str] | None,
    ) -> tuple[str, dict[str, Any], dict[str, Any]]:
        """The topic, body, and delay, headers and index of one send with these options
        (checked), as `send_message` takes them."""
        delay = due_in(delay, eta)
        to = self.topic if topic is None else topic
        if to != self.topic and (to, self.group) not in self.app.subscriptions:
            raise InvalidMessage(
                f"no task of the app on topic {to!r} for group {self.group!r}: no worker "
                f"would run {self.name!r} there (register a task on that topic first)"
            )
        if time_limit is not None:
            if isinstance(time_limit, bool) or not isinstance(time_limit, int | float):
                raise InvalidMessage(f"time_limit must be seconds > 0, not {time_limit!r}")
            if not time_limit > 0:
                raise InvalidMessage(f"time_limit must be seconds > 0, not {time_limit!r}")
            headers = {**(headers or {}), TIME_LIMIT_HEADER: repr(float(time_limit))}
        body = self.body(args, kwargs)
        return to, body, {"delay": delay, "headers": headers, "index_as": (self.group, self.name)}

    def _job(self, sent: Sent) -> Job:
        return Job(
            self.app.client, sent.id, sent.topic, sent.queue, self.group, sent.entry_id, self.name
        )

    def _async_job(self, sent: Sent) -> AsyncJob:
        client = self.app.async_client
        return AsyncJob(
            client, sent.id, sent.topic, sent.queue, self.group, self.name, sent.entry_id
        )

    def body(
        self, args: tuple[Any, ...] | list[Any] = (), kwargs: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """The message body that names this task and its arguments (datetime, date, time,
        UUID and Decimal in their tagged form); raises InvalidMessage for an argument JSON
        cannot carry, or for arguments the task's function could not be called with."""
        if not isinstance(args, tuple | list) or not isinstance(kwargs, dict | None):
            raise InvalidMessage(
                f"cannot send {self.name}: args must be a tuple or list and kwargs a dict, "
                f"not {args!r} and {kwargs!r}"
            )
        shape = (len(args), tuple(kwargs) if kwargs else ())
        if shape not in self._fitting:
            check_call(self.name, self._signature, args, kwargs)
            if len(self._fitting) < MAX_SHAPES:
                self._fitting.add(shape)
        return task_body(self.name, args, kwargs)


def stopped_jobs(exc: RedisMQError, job: Callable[[Sent], Any]) -> RedisMQError:
    """The error of a task's `send_many` that stopped part-way, with `jobs`: each run's job
    where `exc.sent` knows it stored (None for the rest)."""
    exc.jobs = [s and job(s) for s in exc.sent] if exc.sent else None
    return exc


def task_body(name: str, args: Any, kwargs: dict[str, Any] | None) -> dict[str, Any]:
    """The message body that names a task and its arguments (see `Task.body`)."""
    encoded_args, encoded_kwargs = encode_arguments(args, dict(kwargs or {}))
    return {"task": name, "args": encoded_args, "kwargs": encoded_kwargs}


def by_name(
    name: str,
    args: tuple[Any, ...] | list[Any] = (),
    kwargs: dict[str, Any] | None = None,
    *,
    topic: str = DEFAULT_TOPIC,
    group: str = DEFAULT_GROUP,
    delay: float | timedelta | None = None,
    eta: datetime | None = None,
    **send: Any,
) -> tuple[str, str, dict[str, Any]]:
    """(topic, group, the rest of `send_message`'s arguments) of a send of the task
    `name` by name, whose workers register it on `topic` for `group`. Its arguments are
    not checked against the function here; `send`: key, dedup_key, headers, timeout, as in
    `Task.send_with_options`."""
    body = task_body(name, args, kwargs)
    return (
        topic,
        group,
        {"body": body, "delay": due_in(delay, eta), "index_as": (group, name)} | send,
    )


def check_call(
    name: str, signature: inspect.Signature | None, args: Any, kwargs: dict[str, Any] | None
) -> None:
    """Raise InvalidMessage unless a function of this signature takes these arguments."""
    if signature is None:
        return
    try:
        signature.bind(*args, **(kwargs or {}))
    except TypeError as exc:
        raise InvalidMessage(f"cannot send {name}: {exc}") from None


def signature_of(fn: Callable[..., Any]) -> inspect.Signature | None:
    """The signature sends are checked against (None: one Python cannot tell). A
    decorated function's is its wrapper's, not the one it wraps: a decorator may supply
    arguments."""
    try:
        return inspect.signature(fn, follow_wrapped=False)
    except (TypeError, ValueError):
        return None


def due_in(delay: float | timedelta | None, eta: datetime | None) -> float | timedelta | None:
    """The delay of a send given a `delay` or an `eta` (not both)."""
    if eta is None:
        return delay
    if delay is not None:
        raise InvalidMessage("give a delay or an eta, not both")
    return delay_until(eta)


def delay_until(eta: datetime) -> float:
    """Seconds from now until `eta` (naive means UTC), rounded up to the next
    millisecond so that it never runs before; 0 for a time past."""
    if not isinstance(eta, datetime):
        raise InvalidMessage(f"eta must be a datetime, not {eta!r}")
    if eta.tzinfo is None:
        eta = eta.replace(tzinfo=UTC)
    eta_ms = math.ceil(eta.timestamp() * 1000)
    return max(0, eta_ms - now_ms() + 1) / 1000
