"""The sync `Client` and the `AsyncClient` behind one blocking interface, so that one test
case checks both producers' rules (parametrize a test over `PRODUCERS`)."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from typing import Any

import pytest
import redis
import redis.asyncio

from redismq import AsyncClient, Client
from redismq.health import DEFAULT_BROKER
from redismq.routing import queue_for_key

PRODUCERS = ["sync", "async"]


class Blocking:
    """An AsyncClient driven from synchronous test code, on its own event loop (one thread)."""

    def __init__(self, client: AsyncClient) -> None:
        self.client = client
        self.loop = asyncio.new_event_loop()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.client, name)
        if inspect.iscoroutinefunction(attr):
            return lambda *a, **kw: self.loop.run_until_complete(attr(*a, **kw))
        return attr

    def close(self) -> None:
        self.loop.run_until_complete(self.client.aclose())
        self.loop.close()


def make_producer(kind: str, url: str, **options: Any) -> Any:
    """A Client, or an AsyncClient behind `Blocking`, with the same options."""
    return Client(url, **options) if kind == "sync" else Blocking(AsyncClient(url, **options))


@pytest.fixture(params=PRODUCERS)
def producer_kind(request: pytest.FixtureRequest) -> str:
    """ "sync" or "async": a test using it runs once with each producer."""
    return request.param


@pytest.fixture
def producers(producer_kind: str, url: str) -> Any:
    """A factory of producers of one kind (sync or async), all closed after the test; by
    default connected to the shared server (`url`)."""
    made: list[Any] = []

    def make(url: str = url, **options: Any) -> Any:
        made.append(make_producer(producer_kind, url, **options))
        return made[-1]

    yield make
    for p in made:
        p.close()


def key_for(queue: int, queues: int) -> str:
    """A message key that maps to that queue."""
    return next(k for k in map(str, range(100_000)) if queue_for_key(k, queues) == queue)


def drop_first_reply(producer: Any) -> list[Any]:
    """Make the producer's first write to the meta Redis (a script call or a MULTI
    pipeline, on the meta connection or on the calling thread's own connection for sends)
    run on the server, then fail as if the connection dropped before the reply came.
    Returns the replies the server gave to the dropped calls."""
    conn = producer.meta
    dropped: list[Any] = []

    def lost(reply: Any) -> Any:
        if inspect.isawaitable(reply):  # the call would never have reached the server
            raise TypeError("drop_first_reply: an async client's call was not awaited")
        if not dropped:
            dropped.append(reply)
            raise redis.ConnectionError("Connection closed by server.")
        return reply

    real_evalsha: Callable[..., Any] = conn.evalsha
    real_pipeline: Callable[..., Any] = conn.pipeline
    # redis-py's async client shares the sync one's command methods: `evalsha` is a plain
    # function that returns a coroutine, so the client's class tells them apart.
    if isinstance(conn, redis.asyncio.Redis):

        async def evalsha_async(*args: Any, **kwargs: Any) -> Any:
            return lost(await real_evalsha(*args, **kwargs))

        def pipeline_async(*args: Any, **kwargs: Any) -> Any:
            pipe = real_pipeline(*args, **kwargs)
            execute = pipe.execute

            async def execute_then_drop(*a: Any, **kw: Any) -> Any:
                return lost(await execute(*a, **kw))

            pipe.execute = execute_then_drop
            return pipe

        conn.evalsha, conn.pipeline = evalsha_async, pipeline_async
    else:  # the meta Redis, and this thread's own connection for sends (Broker.sender)
        for each in (conn, producer.router.broker(DEFAULT_BROKER).sender()):
            drop_on(each, lost)
    return dropped


def drop_on(conn: redis.Redis, lost: Callable[[Any], Any]) -> None:
    """Pass every reply of `conn`'s script calls and pipelines through `lost`; on a
    single-connection client (a sender), every reply its connection reads, since its script
    calls skip the client's command methods."""
    held = getattr(conn, "connection", None)
    if held is not None:
        real_read: Callable[..., Any] = held.read_response
        held.read_response = lambda *args, **kwargs: lost(real_read(*args, **kwargs))
        return
    real_evalsha: Callable[..., Any] = conn.evalsha
    real_pipeline: Callable[..., Any] = conn.pipeline

    def pipeline(*args: Any, **kwargs: Any) -> Any:
        pipe = real_pipeline(*args, **kwargs)
        execute = pipe.execute
        pipe.execute = lambda *a, **kw: lost(execute(*a, **kw))
        return pipe

    conn.evalsha = lambda *args, **kwargs: lost(real_evalsha(*args, **kwargs))  # type: ignore[method-assign]
    conn.pipeline = pipeline  # type: ignore[method-assign]
