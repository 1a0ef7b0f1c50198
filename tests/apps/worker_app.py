"""The app of the worker tests: tasks, an async task and a message handler.

Every run leaves rows in the side-effect file named by $REDISMQ_TEST_DB. Task names are
given explicitly so that a test can name them without importing this module.
"""

from __future__ import annotations

import asyncio
import sys
import time

from redismq import App, Message, current_job

from .sideeffects import record

app = App()


@app.task(topic="work", name="work.record")
def record_work(i: int) -> int:
    record("work", i)
    time.sleep(0.002)
    return i


@app.task(topic="work", name="work.flaky", backoff=0.2)
def flaky(i: int) -> int:
    """Fails its first attempt, succeeds on the retry."""
    record("flaky", i)
    if current_job().attempt == 0:
        raise RuntimeError("first attempt fails on purpose")
    return i


@app.task(topic="work", name="work.exits", max_retries=0)
def exits(code: int) -> None:
    """Calls sys.exit, as code written for a command line does (argparse on bad input)."""
    record("exits", code)
    sys.exit(code)


@app.task(topic="slow", name="slow.run")
def slow(i: int, seconds: float) -> None:
    """Records when it starts and when it ends."""
    record("start", i)
    time.sleep(seconds)
    record("end", i)


@app.task(topic="async", name="async.record")
async def record_async(i: int) -> int:
    await asyncio.sleep(0.001)
    record("async", i)
    return i


@app.consumer("events", "handlers")
def on_event(msg: Message) -> None:
    record("event", msg.body["n"])
