"""The app of the log-line tests: a task that naps, one that fails."""

from __future__ import annotations

import time

from redismq import App

app = App()


@app.task(topic="naps", name="naps.nap")
def nap(seconds: float) -> None:
    time.sleep(seconds)


@app.task(topic="naps", name="naps.fail", max_retries=0)
def fail() -> None:
    raise KeyError("no such record")
