"""Tasks for the worker runtime tests; side effects go to a SQLite file ($REDISMQ_TEST_DB)."""

from __future__ import annotations

import asyncio
import gc
import os
import sqlite3
import time

from redismq import App, current_job

app = App()


def record(kind: str, value: str) -> None:
    with sqlite3.connect(os.environ["REDISMQ_TEST_DB"], timeout=30) as db:
        db.execute("CREATE TABLE IF NOT EXISTS runs (kind TEXT, value TEXT, pid INTEGER)")
        db.execute("INSERT INTO runs VALUES (?, ?, ?)", (kind, value, os.getpid()))


@app.task(topic="rt", name="sync_job")
def sync_job(n: int) -> int:
    record("sync", str(n))
    return n * 2


@app.task(topic="rt", name="async_job")
async def async_job(n: int) -> int:
    await asyncio.sleep(0.01)
    record("async", str(n))
    return n * 3


@app.task(topic="rt", name="forever", time_limit=1.0, max_retries=0)
def forever() -> None:
    record("forever-start", current_job().id)
    while True:
        time.sleep(0.05)


@app.task(topic="rt", name="async_forever", time_limit=0.5, max_retries=0)
async def async_forever() -> None:
    record("async-forever-start", current_job().id)
    await asyncio.sleep(3600)


@app.task(topic="rt", name="leaves_a_thread", time_limit=0.5, max_retries=0)
async def leaves_a_thread() -> None:
    """Over its time limit while a thread it started still runs (a call without a
    timeout): the time limit cancels the job, not the thread."""
    record("leaves-a-thread-start", current_job().id)
    await asyncio.to_thread(time.sleep, 3600)


@app.task(topic="rt", name="slow", max_retries=0)
def slow(seconds: float, tag: str) -> str:
    record("slow-start", tag)
    job = current_job()
    steps = max(1, int(seconds / 0.1))
    for i in range(steps):
        time.sleep(seconds / steps)
        job.set_progress((i + 1) / steps, f"step {i + 1}")
    record("slow-end", tag)
    return tag


@app.task(topic="rt", name="slow_retried", max_retries=3)
def slow_retried(seconds: float, tag: str) -> str:
    """`slow`, but run again when its worker died (counted as a failed attempt)."""
    return slow(seconds, tag)


@app.task(topic="rt-async", name="async_slow_retried", max_retries=3)
async def async_slow_retried(seconds: float, tag: str) -> str:
    """`slow_retried` as a coroutine, on a topic of coroutines only: its worker runs the
    topic's jobs side by side on one event loop."""
    record("slow-start", tag)
    job = current_job()
    steps = max(1, int(seconds / 0.1))
    for i in range(steps):
        await asyncio.sleep(seconds / steps)
        job.set_progress((i + 1) / steps, f"step {i + 1}")
    record("slow-end", tag)
    return tag


@app.periodic(every=1.0, topic="rt-periodic", name="tick")
def tick() -> None:
    record("tick", current_job().message.headers["periodic-tick"])


@app.task(topic="rt", name="async_sleep", max_retries=0)
async def async_sleep(seconds: float) -> None:
    record("async-sleep-start", current_job().id)
    await asyncio.sleep(seconds)
    record("async-sleep-end", current_job().id)


@app.task(topic="rt", name="frozen_objects")
def frozen_objects() -> int:
    """How many objects the garbage collector of this worker process leaves alone."""
    return gc.get_freeze_count()
