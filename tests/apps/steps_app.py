"""A task whose side effect runs in an effect-once step, and whose process is SIGKILLed right
after the effect (before the acknowledgement) on its first attempt."""

from __future__ import annotations

import os
import signal

from redismq import App, current_job
from tests.apps import sideeffects

app = App()


@app.task(topic="steps", name="steps.effect", max_retries=5)
def effect(n: int) -> None:
    job = current_job()
    with job.once("effect") as step:
        if step.needed:
            sideeffects.record("effect", n)
    if job.attempt == 0:
        os.kill(os.getpid(), signal.SIGKILL)


@app.task(topic="slow-steps", name="steps.slow", max_retries=0)
def slow(seconds: float) -> None:
    """Holds its step's claim for `seconds` (longer than the visibility timeout)."""
    import time

    with current_job().once("slow") as step:
        if step.needed:
            time.sleep(seconds)
            sideeffects.record("slow", 0)
