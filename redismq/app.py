"""Apps: named tasks and message handlers, grouped into subscriptions (topic, group)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from functools import cached_property
from typing import Any, overload

from .aio import AsyncClient
from .arguments import decode_arguments, encode_arguments, may_be_tagged
from .client import Client
from .errors import InvalidMessage, RedisMQError, UnknownTask
from .job import AsyncJob, Job
from .message import Message
from .middleware import Middleware
from .schedule import Schedule
from .tasks import (
    DEFAULT_GROUP,
    DEFAULT_TOPIC,
    TIME_LIMIT_HEADER,
    Options,
    Task,
    by_name,
    check_call,
    make_options,
    signature_of,
)


@dataclass(frozen=True, slots=True)
class Periodic:
    """A task that workers send on a schedule, once per tick across all of them."""

    task: Task
    schedule: Schedule
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Subscription:
    """What one group does with one topic: run named tasks, or one plain handler."""

    topic: str
    group: str
    tasks: dict[str, Task] = field(default_factory=dict)
    handler: Callable[[Message], Any] | None = None
    options: Options = field(default_factory=Options)
    ordered: bool = False
    # Every task of the app by name: a task of another topic may be sent to this one.
    app_tasks: dict[str, Task] | None = field(default=None, repr=False)

    def resolve(
        self, msg: Message
    ) -> tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any], Task | None]:
        """The callable a message runs, its arguments and its task (None for a handler).

        Raises InvalidMessage or UnknownTask for a body that names nothing runnable.
        """
        if self.handler is not None:
            return self.handler, (msg,), {}, None
        body = msg.body
        if not isinstance(body, dict) or not isinstance(body.get("task"), str):
            raise InvalidMessage(f"message {msg.id}: a task body must be an object with 'task'")
        task = self.find_task(body["task"])
        if task is None:
            raise UnknownTask(
                f"message {msg.id} names the unknown task {body['task']!r} "
                f"(known on {self.topic}/{self.group}: {', '.join(sorted(self.tasks)) or 'none'})"
            )
        args, kwargs = body.get("args", []), body.get("kwargs", {})
        if not isinstance(args, list) or not isinstance(kwargs, dict):
            raise InvalidMessage(f"message {msg.id}: 'args' must be a list, 'kwargs' an object")
        if not msg.raw or may_be_tagged(msg.raw):
            return task.fn, *decode_arguments(args, kwargs), task
        return task.fn, tuple(args), kwargs, task

    def find_task(self, name: Any) -> Task | None:
        """The task of that name run here: one of this topic's, or a task of the app on
        another topic sent to this one (`send_with_options(topic=)`); None if unknown."""
        if not isinstance(name, str):
            return None
        task = self.tasks.get(name)
        if task is None and self.app_tasks is not None:
            task = self.app_tasks.get(name)
            if task is not None and task.group != self.group:
                return None
        return task

    def options_for(self, task: Task | None) -> Options:
        return task.options if task is not None else self.options

    def time_limit_for(self, task: Task | None, msg: Message) -> float | None:
        """The message's own time limit (sent with it), else its task's or handler's."""
        sent = msg.headers.get(TIME_LIMIT_HEADER)
        if sent is not None:
            try:
                return float(sent)
            except ValueError:
                pass
        return self.options_for(task).time_limit


class App:
    """A set of tasks and handlers that workers run."""

    def __init__(
        self, client: Client | str | None = None, *, middleware: Iterable[Middleware] = ()
    ) -> None:
        self._client = client if isinstance(client, Client) else None
        self._url = client if isinstance(client, str) else None
        self.subscriptions: dict[tuple[str, str], Subscription] = {}
        self.tasks: dict[str, Task] = {}
        self.periodics: list[Periodic] = []
        self.middleware: list[Middleware] = []
        for m in middleware:
            self.add_middleware(m)

    def add_middleware(self, middleware: Middleware) -> None:
        """Run this middleware's hooks in every worker process (after those added before)."""
        if not isinstance(middleware, Middleware):
            raise RedisMQError(
                f"middleware must be an instance of redismq.Middleware, not {middleware!r}"
            )
        self.middleware.append(middleware)

    def connect(self, client: Client | str | None) -> None:
        """Point the app at another client (or URL; None: $REDISMQ_URL, else the default URL,
        on first use)."""
        self._client = client if isinstance(client, Client) else None
        self._url = client if isinstance(client, str) else None
        self.__dict__.pop("async_client", None)

    @property
    def client(self) -> Client:
        """The app's client; made on first use (from $REDISMQ_URL, else redis://127.0.0.1:6379/0
        as the CLI, when no URL was given)."""
        if self._client is None:
            self._client = Client(self._url)
        return self._client

    @cached_property
    def async_client(self) -> AsyncClient:
        """The app's async client, made on first use with the URL and options of `client`."""
        return AsyncClient.like(self.client)

    def job(self, message_id: str) -> Job:
        """A task's job by its message id alone (see `Client.job`)."""
        return self.client.job(message_id)

    def send_task(self, name: str, *args: Any, **options: Any) -> Job:
        """Queue a run of the task `name` that this app does not define: a producer that
        does not import the workers' code (see `by_name` for the arguments)."""
        topic, group, send = by_name(name, *args, **options)
        sent = self.client.send_message(topic, **send)
        return Job(self.client, sent.id, sent.topic, sent.queue, group, sent.entry_id, name)

    async def send_task_async(self, name: str, *args: Any, **options: Any) -> AsyncJob:
        """`send_task` for async code (no blocking I/O)."""
        client = self.async_client
        topic, group, send = by_name(name, *args, **options)
        sent = await client.send_message(topic, **send)
        return AsyncJob(client, sent.id, sent.topic, sent.queue, group, name, sent.entry_id)

    def _subscription(self, topic: str, group: str, ordered: bool = False) -> Subscription:
        sub = self.subscriptions.setdefault(
            (topic, group), Subscription(topic, group, ordered=ordered, app_tasks=self.tasks)
        )
        if sub.ordered != ordered:
            raise RedisMQError(f"{topic}/{group} is ordered for some tasks and not for others")
        return sub

    @overload
    def task(
        self,
        fn: Callable[..., Any],
        *,
        topic: str = ...,
        group: str = ...,
        name: str | None = ...,
        max_retries: int = ...,
        backoff: float = ...,
        time_limit: float | None = ...,
        ordered: bool = ...,
        retry_for: tuple[type[BaseException], ...] | None = ...,
        dont_retry_for: tuple[type[BaseException], ...] = ...,
    ) -> Task: ...

    @overload
    def task(
        self,
        fn: None = None,
        *,
        topic: str = ...,
        group: str = ...,
        name: str | None = ...,
        max_retries: int = ...,
        backoff: float = ...,
        time_limit: float | None = ...,
        ordered: bool = ...,
        retry_for: tuple[type[BaseException], ...] | None = ...,
        dont_retry_for: tuple[type[BaseException], ...] = ...,
    ) -> Callable[[Callable[..., Any]], Task]: ...

    def task(
        self,
        fn: Callable[..., Any] | None = None,
        *,
        topic: str = DEFAULT_TOPIC,
        group: str = DEFAULT_GROUP,
        name: str | None = None,
        max_retries: int = 3,
        backoff: float = 1.0,
        time_limit: float | None = None,
        ordered: bool = False,
        retry_for: tuple[type[BaseException], ...] | None = None,
        dont_retry_for: tuple[type[BaseException], ...] = (),
    ) -> Task | Callable[[Callable[..., Any]], Task]:
        """Register a function as a task (usable as `@app.task` or `@app.task(...)`).

        `ordered=True` makes the group ordered: each queue is processed by one worker at a
        time, strictly in order, and a failing message is retried in place.
        `retry_for`: only these exceptions are retried (default: any); `dont_retry_for`:
        these are never retried. A failure that is not retried is dead-lettered at once.
        """
        options = make_options(max_retries, backoff, time_limit, retry_for, dont_retry_for)

        def register(f: Callable[..., Any]) -> Task:
            task_name = name or f"{f.__module__}.{f.__qualname__}"
            if task_name in self.tasks:
                raise RedisMQError(f"a task named {task_name!r} is registered already")
            sub = self._subscription(topic, group, ordered)
            if sub.handler is not None:
                raise RedisMQError(f"{topic}/{group} already has a message handler")
            task = Task(self, f, task_name, topic, group, options)
            sub.tasks[task_name] = task
            self.tasks[task_name] = task
            return task

        return register(fn) if fn is not None else register

    def periodic(
        self,
        cron: str | None = None,
        *,
        every: timedelta | float | None = None,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        **task_options: Any,
    ) -> Callable[[Callable[..., Any]], Task]:
        """Register a task that running workers send on a schedule (cron, UTC; or every=).

        Exactly one message is sent per tick however many workers run. Other keyword
        arguments are those of `task()`.
        """
        schedule = Schedule.of(cron, every)

        def register(f: Callable[..., Any]) -> Task:
            # arguments that could never be sent are refused now, not at every tick
            check_call(getattr(f, "__name__", "the task"), signature_of(f), args, kwargs)
            encode_arguments(args, dict(kwargs or {}))
            task = self.task(f, **task_options)
            self.periodics.append(Periodic(task, schedule, tuple(args), dict(kwargs or {})))
            return task

        return register

    def consumer(
        self,
        topic: str,
        group: str,
        *,
        max_retries: int = 3,
        backoff: float = 1.0,
        time_limit: float | None = None,
        ordered: bool = False,
        retry_for: tuple[type[BaseException], ...] | None = None,
        dont_retry_for: tuple[type[BaseException], ...] = (),
    ) -> Callable[[Callable[[Message], Any]], Callable[[Message], Any]]:
        """Register a handler that receives every message of `topic` for `group`
        (`ordered=True`: one consumer per queue at a time, strictly in order; `retry_for`
        and `dont_retry_for` as for `task`)."""
        options = make_options(max_retries, backoff, time_limit, retry_for, dont_retry_for)

        def register(f: Callable[[Message], Any]) -> Callable[[Message], Any]:
            sub = self._subscription(topic, group, ordered)
            if sub.handler is not None or sub.tasks:
                raise RedisMQError(f"{topic}/{group} already has tasks or a handler")
            sub.handler = f
            sub.options = options
            return f

        return register
