"""The app of the log-line tests: a task that naps, one that fails, one that forks."""

from __future__ import annotations

import logging
import os
import time

from redismq import App

app = App()


@app.task(topic="naps", name="naps.nap")
def nap(seconds: float) -> None:
    time.sleep(seconds)


@app.task(topic="naps", name="naps.fail", max_retries=0)
def fail() -> None:
    raise KeyError("no such record")


@app.task(topic="naps", name="naps.fork")
def fork() -> None:
    """Forks a child that logs a line and exits (what `multiprocessing`'s fork does)."""
    pid = os.fork()
    if pid == 0:
        logging.getLogger("naps.child").warning("the forked child logs")
        logging.getLogger().handlers[0].flush()
        os._exit(0)
    os.waitpid(pid, 0)
