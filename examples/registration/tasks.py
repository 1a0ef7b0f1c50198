"""The worker side: what runs when a user signs up.

One topic, `user-registered`, and one message per sign-up, read by two groups (fan-out):

- `mailer` runs the message as the task `send_welcome_email` (the e-mail, sent once);
- `analytics` receives the same message with a plain handler and records the event.

Every group gets every message once, so a third group (say, a CRM sync) is one more
`@app.consumer` here and no change to the web app.

Run it: redismq worker examples.registration.tasks:app --processes 2
"""

from __future__ import annotations

from redismq import App, Message, current_job

from . import db
from .mail import deliver_welcome

TOPIC = "user-registered"

app = App()  # connects on first use to $REDISMQ_URL


@app.task(
    topic=TOPIC, group="mailer", name="registration.send_welcome_email", max_retries=3, backoff=0.5
)
def send_welcome_email(user_id: int, email: str, name: str) -> str:
    """Send the welcome e-mail over SMTP, once.

    Three guards: the effect-once step is claimed atomically on the broker, so two runs of
    the same message at the same moment cannot both send; the "sent" record in our own
    database (mail.deliver_welcome) survives what the broker may lose in a failover, and
    also catches a second message for the same user; and the step's key, the same in
    every run, is the e-mail's Message-ID, so that the receiving side drops the e-mail a
    run killed (or paused past its lease) between the send and the done mark sends again.
    """
    job = current_job()
    with job.once("smtp-send") as step:
        if not step.needed:
            return "already sent"
        return deliver_welcome(user_id, email, name, job_id=job.id, idempotency_key=step.key)


@app.consumer(TOPIC, group="analytics")
def record_signup(msg: Message) -> None:
    """Count the sign-up by e-mail domain (idempotent: one row per message id)."""
    user = msg.body["kwargs"]
    conn = db.connect()
    try:
        db.record_event(conn, msg.id, user["user_id"], user["email"].rpartition("@")[2])
    finally:
        conn.close()
