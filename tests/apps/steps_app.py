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
