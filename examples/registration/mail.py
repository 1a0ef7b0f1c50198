"""The welcome e-mail: composed, sent over SMTP, and recorded so that it goes out once.

`deliver_welcome()` is what the worker's task runs (and what the web app runs itself in the
"inline" mode that `measure` compares against). How "once" works:

1. check the database: if the user's welcome e-mail is recorded as sent, stop;
2. send it over SMTP, with a Message-ID made from the idempotency key the task passes
   (its effect-once step's `step.key`: the same in every run of that message);
3. record it as sent, in one transaction whose unique key is the user id.

A task runs at least once: a worker killed after step 3 but before the queue's
acknowledgement has its message delivered again, and the next run stops at step 1 (or
earlier, at the step's done mark). What remains is the window between the SMTP server's
"250 OK" in step 2 and the step's done mark: a run killed there (or paused past its lease
between the step's claim and the send) sends the e-mail again. SMTP cannot be asked "did
you get this one already?", so the second e-mail carries the same Message-ID, and the
receiving side drops it (the example's SMTP sink does, as a mail API with idempotency keys
does).
"""

from __future__ import annotations

import logging
import os
import smtplib
from email.message import EmailMessage
from email.utils import formataddr, formatdate

from . import db

log = logging.getLogger("registration.mail")
SENDER = "welcome@registration.example"


def smtp_address() -> tuple[str, int]:
    """$SMTP_HOST and $SMTP_PORT (default 127.0.0.1:8025, the sink's default)."""
    return os.environ.get("SMTP_HOST", "127.0.0.1"), int(os.environ.get("SMTP_PORT", "8025"))


def message_id(user_id: int, idempotency_key: str | None = None) -> str:
    """The Message-ID of a welcome e-mail: from the idempotency key (the same in every run
    of one message's task), else from the user id (the inline mode, which has no task)."""
    if idempotency_key:
        return f"<welcome-{idempotency_key}@registration.example>"
    return f"<welcome-{user_id}@registration.example>"


def compose(
    user_id: int, email: str, name: str, idempotency_key: str | None = None
) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = formataddr(("Registration example", SENDER))
    msg["To"] = formataddr((name, email))
    msg["Subject"] = f"Welcome, {name}!"
    msg["Date"] = formatdate(localtime=True)
    msg["Message-ID"] = message_id(user_id, idempotency_key)
    msg.set_content(
        f"Hello {name},\n\nyour account #{user_id} is ready. Welcome aboard!\n\n"
        "-- the registration example of redismq\n"
    )
    return msg


def deliver_welcome(
    user_id: int,
    email: str,
    name: str,
    *,
    job_id: str | None = None,
    db_path: str | None = None,
    idempotency_key: str | None = None,
) -> str:
    """Send the user's welcome e-mail unless it was sent already; `idempotency_key` (the
    task's `step.key`) makes its Message-ID, so that a receiver can drop a repeat.

    Returns "sent" or "already sent"; raises (so that the task is retried) when the SMTP
    server cannot be reached or refuses the e-mail.
    """
    conn = db.connect(db_path)
    try:
        if db.welcome_record(conn, user_id) is not None:
            return "already sent"
        host, port = smtp_address()
        with smtplib.SMTP(host, port, timeout=30) as smtp:
            smtp.send_message(compose(user_id, email, name, idempotency_key))
        # <- the window: the SMTP server has the e-mail, nothing here knows it yet
        mid = message_id(user_id, idempotency_key)
        if not db.record_welcome(conn, user_id, mid, job_id):
            log.warning("welcome e-mail of user %s was sent by two runs at once", user_id)
        return "sent"
    finally:
        conn.close()
