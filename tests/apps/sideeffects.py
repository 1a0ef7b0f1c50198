"""Side effects that outlive a killed worker: one SQLite row per run of a task.

The file is named by $REDISMQ_TEST_DB. Every row is committed as soon as it is written, so
what a SIGKILLed worker did before it died stays on disk.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections import Counter
from pathlib import Path

ENV_DB = "REDISMQ_TEST_DB"

_local = threading.local()


def connect(path: str | Path) -> sqlite3.Connection:
    """A connection in autocommit mode to the side-effect file (made if missing)."""
    conn = sqlite3.connect(str(path), timeout=30.0, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=OFF")  # a killed process loses nothing; only a crashed OS
    conn.execute(
        "CREATE TABLE IF NOT EXISTS runs (kind TEXT NOT NULL, key TEXT NOT NULL, pid INTEGER)"
    )
    return conn


def record(kind: str, key: object) -> None:
    """Write one row: this process ran `kind` for `key` (committed at once)."""
    conn = getattr(_local, "conn", None)
    if conn is None:
        conn = _local.conn = connect(os.environ[ENV_DB])
    conn.execute(
        "INSERT INTO runs (kind, key, pid) VALUES (?, ?, ?)", (kind, str(key), os.getpid())
    )


def runs(path: str | Path, kind: str) -> Counter[str]:
    """How many times each key of `kind` was run."""
    conn = connect(path)
    try:
        rows = conn.execute("SELECT key FROM runs WHERE kind = ?", (kind,)).fetchall()
    finally:
        conn.close()
    return Counter(key for (key,) in rows)


def count(path: str | Path, kind: str) -> int:
    """How many runs of `kind` were recorded."""
    conn = connect(path)
    try:
        return conn.execute("SELECT COUNT(*) FROM runs WHERE kind = ?", (kind,)).fetchone()[0]
    finally:
        conn.close()
