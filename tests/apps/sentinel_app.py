"""The app of the Sentinel failover test: each run of `record` leaves one row (its key) in
the side-effect file named by $REDISMQ_TEST_DB.

Run as `redismq worker tests.apps.sentinel_app:app --url META` with $REDISMQ_TEST_DB set.
"""

from __future__ import annotations

from redismq import App

from .sideeffects import record as record_run

TOPIC = "failover"
TASK = "failover.record"

app = App()


@app.task(topic=TOPIC, name=TASK, max_retries=10, backoff=0.2)
def record(key: str) -> None:
    record_run(TASK, key)
