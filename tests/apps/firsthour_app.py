"""The app of the first-hour tests (issue 14): a task that fails deep in its own code, and a
middleware that records its hooks in the side-effect file named by $REDISMQ_TEST_DB (when
set)."""

from __future__ import annotations

import os

from redismq import App, Middleware

from .sideeffects import ENV_DB, record


def parse_order(text: str) -> int:
    return int(text)  # raises ValueError: the frame the traceback must show


class Recorder(Middleware):
    """Records every hook with the job id, the result or the error type."""

    def __init__(self) -> None:
        self.started = False

    def on_worker_start(self, worker: object) -> None:
        self.started = True
        record("start", type(worker).__name__)

    def on_worker_stop(self, worker: object) -> None:
        record("stop", type(worker).__name__)

    def before_job(self, job) -> None:  # type: ignore[no-untyped-def]
        record("before", f"{job.id} started={self.started}")

    def after_job(self, job, result, error) -> None:  # type: ignore[no-untyped-def]
        record("after", f"{job.id} {job.task} {result!r} {type(error).__name__}")


app = App(middleware=[Recorder()] if os.environ.get(ENV_DB) else [])


@app.task(topic="orders", name="orders.import", max_retries=1, backoff=0.01)
def import_order(text: str) -> int:
    return parse_order(text)


def stuck_here(seconds: float) -> None:
    import time

    time.sleep(seconds)  # the frame a time limit's traceback must show


@app.task(topic="stuck", name="stuck.wait", max_retries=0, time_limit=0.5)
def wait(seconds: float) -> None:
    stuck_here(seconds)
