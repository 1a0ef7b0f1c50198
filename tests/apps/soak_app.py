"""The app of the fault soak (tests/fault/soak.py): one task whose side effect is one row in
the SQLite table `effects`, written inside an effect-once step.

The table stands for the external system: it receives the step's `step.key` with the
effect, the idempotency key a mail or payment API checks. Every effect a run did is a row;
the soak counts a row whose key an earlier row has as *fenced* (the external system would
drop it).

Every start of the handler also leaves a row in `runs` (to count redeliveries), a run whose
step was already done leaves a row in `skips` (an effect the step suppressed), and a step
whose done mark came later than the visibility timeout after its claim leaves a row in
`late_marks` (a run slower than its lease: paused or starved). Rows
are committed at once, so what a SIGKILLed worker did before it died stays on disk.

Run as `redismq worker tests.apps.soak_app:app --url META` with $REDISMQ_SOAK_DB naming the
file (made by `create_db`).
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from pathlib import Path

from redismq import App, current_job

ENV_DB = "REDISMQ_SOAK_DB"
TOPIC = "soak"
TASK = "soak.effect"
GROUP = "workers"  # the App's default group
# Crash counting turns deliveries without an outcome into attempts (a SIGKILLed child), and a
# busy step is retried: generous, so that the faults of the soak do not dead-letter anything.
MAX_RETRIES = 20

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS runs "
    "(task_id INTEGER NOT NULL, pid INTEGER, thread INTEGER, message_id TEXT, queue INTEGER,"
    " attempt INTEGER, at REAL)",
    "CREATE TABLE IF NOT EXISTS effects "
    "(task_id INTEGER NOT NULL, pid INTEGER, thread INTEGER, message_id TEXT, queue INTEGER,"
    " claimed_at REAL, key TEXT, at REAL)",
    "CREATE INDEX IF NOT EXISTS effects_by_key ON effects (key)",
    "CREATE TABLE IF NOT EXISTS skips "
    "(task_id INTEGER NOT NULL, pid INTEGER, thread INTEGER, message_id TEXT, queue INTEGER,"
    " at REAL)",
    # a step whose done mark came after its claim had expired (claim + visibility timeout)
    "CREATE TABLE IF NOT EXISTS late_marks "
    "(task_id INTEGER NOT NULL, pid INTEGER, thread INTEGER, message_id TEXT, queue INTEGER,"
    " seconds REAL, at REAL)",
)

app = App()
_local = threading.local()


def connect(path: str | Path) -> sqlite3.Connection:
    """An autocommit connection to the soak's side-effect file."""
    conn = sqlite3.connect(str(path), timeout=60.0, isolation_level=None)
    conn.execute("PRAGMA synchronous=OFF")  # a killed process loses nothing; only a crashed OS
    return conn


def create_db(path: str | Path) -> None:
    """Make the side-effect file with its tables (WAL: readers never block the writers)."""
    conn = connect(path)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        for statement in SCHEMA:
            conn.execute(statement)
    finally:
        conn.close()


def _db() -> sqlite3.Connection:
    conn = getattr(_local, "conn", None)
    if conn is None:
        conn = _local.conn = connect(os.environ[ENV_DB])
    return conn


def _row(table: str, task_id: int, *extra: object) -> None:
    job = current_job()
    _db().execute(
        f"INSERT INTO {table} VALUES (?, ?, ?, ?, ?, {', '.join('?' * (1 + len(extra)))})",
        (
            task_id,
            os.getpid(),
            threading.get_native_id(),
            job.id,
            job.message.queue,
            *extra,
            time.time(),
        ),
    )


@app.task(topic=TOPIC, name=TASK, max_retries=MAX_RETRIES, backoff=0.2)
def effect(task_id: int) -> None:
    """Record the run, then the side effect, once per task, inside an effect-once step."""
    job = current_job()
    _row("runs", task_id, job.attempt)
    with job.once("effect") as step:
        claimed, claimed_at = time.monotonic(), time.time()
        if step.needed:
            _row("effects", task_id, claimed_at, step.key)
        else:
            _row("skips", task_id)
    took = time.monotonic() - claimed
    if step.needed and job.consumer is not None and took > job.consumer.visibility_timeout:
        _row("late_marks", task_id, took)  # slower than the timeout (a pause, a stall)
