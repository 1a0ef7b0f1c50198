"""The app of the fault test: each run of `record` leaves one row in the side-effect file.

Run as `redismq worker tests.apps.fault_app:app --url ...` with $REDISMQ_TEST_DB set.
"""

from __future__ import annotations

import time

from redismq import App

from .sideeffects import record as record_run

TOPIC = "fault"
TASK = "fault.record"

app = App()


@app.task(topic=TOPIC, name=TASK)
def record(i: int) -> None:
    """The side effect first, then a little work, so that a kill often lands in between."""
    record_run(TASK, i)
    time.sleep(0.003)
