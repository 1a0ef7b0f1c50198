"""Tasks and a handler for the metrics tests."""

from __future__ import annotations

import os
import time

from redismq import App, Message, current_job

app = App()


@app.task(topic="metrics", name="ok")
def ok(n: int) -> int:
    return n


@app.task(topic="metrics", name="boom", max_retries=1, backoff=0.01)
def boom() -> None:
    raise RuntimeError("boom")


@app.task(topic="metrics", name="hang", max_retries=0)
def hang(seconds: float) -> None:
    """Runs for `seconds`, its process id readable as its progress text."""
    current_job().set_progress(0.0, str(os.getpid()))
    time.sleep(seconds)


@app.consumer("metrics-events", group="listeners")
def on_event(msg: Message) -> None:
    pass
