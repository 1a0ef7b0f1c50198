"""The tasks `redismq bench` runs: no-ops, and a probe that records when it started.

The redismq worker loads ``redismq.cli.bench_app:app`` (with no URL: the CLI sets $REDISMQ_URL);
RQ imports ``rq_noop`` and ``rq_record_start`` by their dotted paths.
"""

from __future__ import annotations

import json
import os
import time
from typing import cast

import redis
from redis.typing import KeyT, StreamIdT

from redismq import App
from redismq.message import StreamEntry
from redismq.urls import driver_info

TOPIC = "bench"
LATENCY_TOPIC = "bench-latency"
# The Redis list where `record_start` and `rq_record_start` push [sent_at, started_at].
LATENCY_LIST = "bench:latency"
# Where the bare consumer that measures the floor of idle latency waits.
RAW_LATENCY_STREAM = "bench:raw-latency"
RAW_LATENCY_GROUP = "g"

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


def raw_latency_consumer() -> None:
    """A bare redis-py consumer, for the floor of idle latency: blocked in XREADGROUP
    (COUNT 1), it decodes each probe's body, records its start as `record_start` does and
    acknowledges it. Runs until stopped."""
    r = redis.Redis.from_url(os.environ["REDISMQ_URL"], driver_info=driver_info())
    streams: dict[KeyT, StreamIdT] = {RAW_LATENCY_STREAM: ">"}
    while True:
        reply = r.xreadgroup(RAW_LATENCY_GROUP, "c", streams, count=1, block=1000)
        for _, entries in cast(list[tuple[bytes, list[StreamEntry]]], reply):
            for entry_id, fields in entries:
                record_start.fn(*json.loads(fields[b"body"])["args"])
                r.xack(RAW_LATENCY_STREAM, RAW_LATENCY_GROUP, entry_id)


def rq_noop() -> None:
    """The RQ twin of `noop`."""


def rq_record_start(sent_at: float) -> None:
    """The RQ twin of `record_start`."""
    _record(sent_at)


SLOW_TOPIC = "bench-slow"
# A topic of its own: a worker runs a topic's coroutines side by side on one event loop
# when all its tasks are coroutines.
SLOW_ASYNC_TOPIC = "bench-slow-async"
# The file where the slow tasks append [position, started_at, ended_at] lines: an append
# takes microseconds on the job's own thread, where a Redis call would take a round trip
# (and, for a coroutine, a hop to a thread) between the job's end and its slot's release,
# which the bench would count as the queue's time.
SLOW_RECORDS_ENV = "REDISMQ_BENCH_SLOW_RECORDS"

_records_fd: int | None = None


def _record_slow(position: int, started: float) -> None:
    global _records_fd
    line = json.dumps([position, started, time.time()]) + "\n"
    if _records_fd is None:
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT
        _records_fd = os.open(os.environ[SLOW_RECORDS_ENV], flags, 0o600)
    os.write(_records_fd, line.encode())  # O_APPEND: one line per write, whole


@app.task(topic=SLOW_TOPIC, name="bench.slow")
def slow(position: int, seconds: float) -> None:
    """Sleeps `seconds` (a job waiting on I/O); records when it ran."""
    started = time.time()
    time.sleep(seconds)
    _record_slow(position, started)


@app.task(topic=SLOW_ASYNC_TOPIC, name="bench.slow_async")
async def slow_async(position: int, seconds: float) -> None:
    """Awaits `seconds` (an async job waiting on I/O); records when it ran."""
    import asyncio

    started = time.time()
    await asyncio.sleep(seconds)
    _record_slow(position, started)
