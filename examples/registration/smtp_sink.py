"""A local SMTP server that keeps every e-mail it accepts in a SQLite table, standing in
for the real mail server.

- `--delay S` waits S seconds before answering each e-mail, like a real mail server (or a
  mail API) does; `measure` uses it to show what that wait costs a sign-up done inline.
- Recipients at a `--reject-domain` (default bounce.example) are refused with a permanent
  550, so that the demo has failing tasks that end up as dead letters.
- An e-mail whose Message-ID it already stored for the same recipient is answered 250 and
  dropped, and counted (`dropped`): receiver-side deduplication, the way a mail API's
  idempotency key works. The worker sends the welcome e-mail with its step's `step.key` as
  the Message-ID, the same in every run, so a run repeated after a crash between the send
  and the step's done mark delivers nothing twice. `--no-dedup` stores every e-mail.

Run it: python -m examples.registration.smtp_sink --port 8025 --db mailbox.db
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import socket
import sqlite3
import threading
import time
from email import message_from_bytes
from email.policy import default as default_policy
from types import TracebackType
from typing import Any

from aiosmtpd.controller import Controller

SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id  TEXT,
    mail_from   TEXT NOT NULL,
    rcpt_to     TEXT NOT NULL,
    subject     TEXT,
    received_at REAL NOT NULL,
    raw         BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_by_message_id ON messages (message_id, rcpt_to);
CREATE TABLE IF NOT EXISTS dropped (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id  TEXT NOT NULL,
    rcpt_to     TEXT NOT NULL,
    received_at REAL NOT NULL
);
"""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class Handler:
    """The aiosmtpd handler: refuses the reject domains, drops e-mails whose Message-ID it
    has for that recipient already (if `dedup`), stores the rest."""

    def __init__(
        self,
        db_path: str,
        delay: float = 0.0,
        reject_domains: tuple[str, ...] = (),
        dedup: bool = True,
    ):
        self.db_path = db_path
        self.delay = delay
        self.reject_domains = tuple(d.lower() for d in reject_domains)
        self.dedup = dedup
        with sqlite3.connect(db_path) as conn:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.executescript(SCHEMA)

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options) -> str:  # noqa: N802
        if address.rpartition("@")[2].lower() in self.reject_domains:
            return "550 5.1.1 mailbox unavailable"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope) -> str:  # noqa: N802
        if self.delay:
            await asyncio.sleep(self.delay)
        parsed = message_from_bytes(envelope.content, policy=default_policy)
        message_id = parsed.get("Message-ID")
        with sqlite3.connect(self.db_path, timeout=30) as conn:
            for rcpt in envelope.rcpt_tos:
                if self.dedup and message_id and self._seen(conn, message_id, rcpt):
                    conn.execute(
                        "INSERT INTO dropped (message_id, rcpt_to, received_at) VALUES (?, ?, ?)",
                        (message_id, rcpt, time.time()),
                    )
                    continue
                conn.execute(
                    "INSERT INTO messages (message_id, mail_from, rcpt_to, subject, received_at,"
                    " raw) VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        message_id,
                        envelope.mail_from,
                        rcpt,
                        parsed.get("Subject"),
                        time.time(),
                        envelope.content,
                    ),
                )
        return "250 Message accepted for delivery"

    @staticmethod
    def _seen(conn: sqlite3.Connection, message_id: str, rcpt: str) -> bool:
        row = conn.execute(
            "SELECT 1 FROM messages WHERE message_id = ? AND rcpt_to = ? LIMIT 1",
            (message_id, rcpt),
        ).fetchone()
        return row is not None


class SmtpSink:
    """The sink on a loopback port, served by a thread (a context manager)."""

    def __init__(
        self,
        db_path: str,
        port: int | None = None,
        host: str = "127.0.0.1",
        delay: float = 0.0,
        reject_domains: tuple[str, ...] = ("bounce.example",),
        dedup: bool = True,
    ) -> None:
        self.db_path = db_path
        self.host = host
        self.port = port or free_port(host)
        self.handler = Handler(db_path, delay, reject_domains, dedup)
        self.controller = Controller(self.handler, hostname=host, port=self.port)

    def start(self) -> SmtpSink:
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()

    def __enter__(self) -> SmtpSink:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def messages(self) -> list[dict[str, Any]]:
        """What it received: one row per recipient, oldest first."""
        return received(self.db_path)

    def count(self) -> tuple[int, int]:
        """E-mails received, and how many of them are distinct (Message-ID and recipient)."""
        with sqlite3.connect(self.db_path, timeout=30) as conn:
            return conn.execute(
                "SELECT COUNT(*), COUNT(DISTINCT message_id || ' ' || rcpt_to) FROM messages"
            ).fetchone()

    def dropped(self) -> int:
        """E-mails dropped as duplicates (a Message-ID seen before for that recipient)."""
        return dropped(self.db_path)


def dropped(db_path: str) -> int:
    with sqlite3.connect(db_path, timeout=30) as conn:
        return conn.execute("SELECT COUNT(*) FROM dropped").fetchone()[0]


def received(db_path: str) -> list[dict[str, Any]]:
    with sqlite3.connect(db_path, timeout=30) as conn:
        conn.row_factory = sqlite3.Row
        rows = conn.execute(
            "SELECT id, message_id, mail_from, rcpt_to, subject, received_at FROM messages "
            "ORDER BY id"
        ).fetchall()
    return [dict(r) for r in rows]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8025)
    parser.add_argument("--db", default="mailbox.db", help="SQLite file of received e-mails")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before each answer")
    parser.add_argument(
        "--reject-domain", action="append", default=None, help="refuse mail to this domain"
    )
    parser.add_argument(
        "--no-dedup",
        action="store_true",
        help="store every e-mail (default: drop one whose Message-ID it has already)",
    )
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args()
    rejects = tuple(args.reject_domain or ["bounce.example"])
    sink = SmtpSink(args.db, args.port, args.host, args.delay, rejects, dedup=not args.no_dedup)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with sink:
        print(f"SMTP sink on {args.host}:{sink.port}, storing into {args.db}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            stop.wait()


if __name__ == "__main__":
    main()
