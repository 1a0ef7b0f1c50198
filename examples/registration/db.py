"""The example's SQLite database: users, the record of welcome e-mails sent, sign-up events.

Every function takes an open connection; `connect()` makes one (and the tables, once per
file). Connections are short-lived: one per request or task run.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any

DEFAULT_PATH = "registration.db"

SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    email      TEXT NOT NULL UNIQUE,
    name       TEXT NOT NULL,
    created_at REAL NOT NULL
);
-- One row per user whose welcome e-mail went out: the primary key is the unique
-- constraint that makes "sent" a fact recorded once.
CREATE TABLE IF NOT EXISTS welcome_emails (
    user_id    INTEGER PRIMARY KEY REFERENCES users(id),
    message_id TEXT NOT NULL,
    job_id     TEXT,
    sent_at    REAL NOT NULL
);
-- What the analytics group saw, one row per message (a redelivery changes nothing).
CREATE TABLE IF NOT EXISTS signup_events (
    message_id  TEXT PRIMARY KEY,
    user_id     INTEGER NOT NULL,
    domain      TEXT NOT NULL,
    received_at REAL NOT NULL
);
"""

_ready: set[str] = set()
_lock = threading.Lock()


def path() -> str:
    """The database file: $REGISTRATION_DB, else registration.db in the current directory."""
    return os.environ.get("REGISTRATION_DB") or DEFAULT_PATH


def connect(db_path: str | None = None) -> sqlite3.Connection:
    """A new connection (WAL mode, so that the web app and the workers don't block each
    other's reads); creates the tables on first use of a file."""
    db_path = db_path or path()
    conn = sqlite3.connect(db_path, timeout=30.0)
    conn.row_factory = sqlite3.Row
    with _lock:
        if db_path not in _ready:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.executescript(SCHEMA)
            _ready.add(db_path)
    return conn


def add_user(
    conn: sqlite3.Connection,
    email: str,
    name: str,
    then: Callable[[sqlite3.Connection, dict[str, Any]], Any] | None = None,
) -> tuple[dict[str, Any], bool]:
    """Insert a user (committed before this returns), and do `then(conn, user)` in the same
    transaction (the web app writes the welcome e-mail's outbox row there); an e-mail
    address that is registered already gives the existing user. Returns the user and
    whether it was created."""
    try:
        with conn:
            cur = conn.execute(
                "INSERT INTO users (email, name, created_at) VALUES (?, ?, ?)",
                (email, name, time.time()),
            )
            user = get_user(conn, int(cur.lastrowid or 0))
            assert user is not None
            if then is not None:
                then(conn, user)
        return user, True
    except sqlite3.IntegrityError:
        row = conn.execute("SELECT * FROM users WHERE email = ?", (email,)).fetchone()
        return dict(row), False


def get_user(conn: sqlite3.Connection, user_id: int) -> dict[str, Any] | None:
    row = conn.execute("SELECT * FROM users WHERE id = ?", (user_id,)).fetchone()
    return dict(row) if row else None


def welcome_record(conn: sqlite3.Connection, user_id: int) -> dict[str, Any] | None:
    """The record of the user's welcome e-mail, if it was sent."""
    row = conn.execute("SELECT * FROM welcome_emails WHERE user_id = ?", (user_id,)).fetchone()
    return dict(row) if row else None


def record_welcome(
    conn: sqlite3.Connection, user_id: int, message_id: str, job_id: str | None
) -> bool:
    """Record that the user's welcome e-mail was sent, in one transaction. False if it was
    recorded already (the unique user_id: another run sent it too)."""
    try:
        with conn:
            conn.execute(
                "INSERT INTO welcome_emails (user_id, message_id, job_id, sent_at) "
                "VALUES (?, ?, ?, ?)",
                (user_id, message_id, job_id, time.time()),
            )
        return True
    except sqlite3.IntegrityError:
        return False


def record_event(conn: sqlite3.Connection, message_id: str, user_id: int, domain: str) -> bool:
    """Record a sign-up event seen by the analytics group; False if seen before."""
    with conn:
        cur = conn.execute(
            "INSERT OR IGNORE INTO signup_events (message_id, user_id, domain, received_at) "
            "VALUES (?, ?, ?, ?)",
            (message_id, user_id, domain, time.time()),
        )
    return cur.rowcount == 1


def counts(conn: sqlite3.Connection) -> dict[str, int]:
    """Users, welcome e-mails recorded and sign-up events."""
    return {
        table: conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
        for table in ("users", "welcome_emails", "signup_events")
    }
