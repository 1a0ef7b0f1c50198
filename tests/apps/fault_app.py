"""The app of the fault test: each run of `record` (or `record_async`) leaves one row in the
side-effect file.

Run as `redismq worker tests.apps.fault_app:app --url ...` with $REDISMQ_TEST_DB set.
"""

from __future__ import annotations

import asyncio
import time

from redismq import App

from .sideeffects import record as record_run

TOPIC = "fault"
TASK = "fault.record"
# A topic of coroutines: its jobs run side by side on one event loop (workers/slots.py).
ASYNC_TOPIC = "fault-async"
ASYNC_TASK = "fault.record_async"

app = App()


@app.task(topic=TOPIC, name=TASK)
def record(i: int) -> None:
    """The side effect first, then a little work, so that a kill often lands in between."""
    record_run(TASK, i)
    time.sleep(0.003)


@app.task(topic=ASYNC_TOPIC, name=ASYNC_TASK)
async def record_async(i: int) -> None:
    """`record` as a coroutine."""
    record_run(ASYNC_TASK, i)
    await asyncio.sleep(0.003)
