"""The tasks `redismq bench` runs: no-ops, and a probe that records when it started.

The redismq worker loads ``redismq.cli.bench_app:app`` (with no URL: the CLI sets $REDISMQ_URL);
RQ imports ``rq_noop`` and ``rq_record_start`` by their dotted paths.
"""

from __future__ import annotations

import json
import os
import time

import redis

from redismq import App
from redismq.urls import driver_info

TOPIC = "bench"
LATENCY_TOPIC = "bench-latency"
# The Redis list where `record_start` and `rq_record_start` push [sent_at, started_at].
LATENCY_LIST = "bench:latency"

app = App()

_redis: redis.Redis | None = None


def _conn() -> redis.Redis:
    global _redis
    if _redis is None:
        # redismq's driver info: redis-py's own looks its version up in the installed
        # packages for each new connection (milliseconds in the first jobs of a bench)
        _redis = redis.Redis.from_url(
            os.environ["REDISMQ_URL"], max_connections=10_000, driver_info=driver_info()
        )
    return _redis


def _record(sent_at: float) -> None:
    started = time.time()
    _conn().rpush(LATENCY_LIST, json.dumps([sent_at, started]))


@app.task(topic=TOPIC, name="bench.noop")
def noop() -> None:
    """Does nothing: what is measured is the queue."""


@app.task(topic=LATENCY_TOPIC, name="bench.record_start")
def record_start(sent_at: float) -> None:
    """Records when it started next to when it was sent (time.time() of both)."""
    _record(sent_at)


def rq_noop() -> None:
    """The RQ twin of `noop`."""


def rq_record_start(sent_at: float) -> None:
    """The RQ twin of `record_start`."""
    _record(sent_at)


SLOW_TOPIC = "bench-slow"
# A topic of its own: a worker runs a topic's coroutines side by side on one event loop
# when all its tasks are coroutines.
SLOW_ASYNC_TOPIC = "bench-slow-async"
# The Redis list where the slow tasks push [position, started_at, ended_at].
SLOW_LIST = "bench:slow"


@app.task(topic=SLOW_TOPIC, name="bench.slow")
def slow(position: int, seconds: float) -> None:
    """Sleeps `seconds` (a job waiting on I/O); records when it ran."""
    started = time.time()
    time.sleep(seconds)
    _conn().rpush(SLOW_LIST, json.dumps([position, started, time.time()]))


@app.task(topic=SLOW_ASYNC_TOPIC, name="bench.slow_async")
async def slow_async(position: int, seconds: float) -> None:
    """Awaits `seconds` (an async job waiting on I/O); records when it ran."""
    import asyncio

    started = time.time()
    await asyncio.sleep(seconds)
    # off the event loop, as an async job does its I/O: the loop runs the other jobs
    record = json.dumps([position, started, time.time()])
    await asyncio.to_thread(_conn().rpush, SLOW_LIST, record)
