"""The registration example for real: the FastAPI app served by uvicorn, a real worker
process and the real SMTP sink, on loopback ports. Every user gets one welcome e-mail and
one analytics event; resends send nothing; a worker killed between sending and
acknowledging does not send twice; bad input is a 422 and sends nothing."""

from __future__ import annotations

import sqlite3
import textwrap
from collections import Counter

import httpx
import pytest
from conftest import ROOT, wait_for

from examples.registration import db, tasks
from examples.registration.smtp_sink import SmtpSink, free_port
from examples.registration.web import create_app, serve_in_thread
from redismq.status import snapshot

APP = "examples.registration.tasks:app"


@pytest.fixture
def system(url, tmp_path, monkeypatch):
    """The SMTP sink, the app's settings in the environment, the example's App connected
    to this test's server, and its topic created (workers are started by each test)."""
    with SmtpSink(str(tmp_path / "mailbox.db")) as sink:
        monkeypatch.setenv("REDISMQ_URL", url)
        monkeypatch.setenv("REGISTRATION_DB", str(tmp_path / "registration.db"))
        monkeypatch.setenv("SMTP_HOST", sink.host)
        monkeypatch.setenv("SMTP_PORT", str(sink.port))
        tasks.app.connect(None)  # connect to this test's server
        tasks.app.client.create_topic(tasks.TOPIC)
        yield sink
        tasks.app.connect(None)


@pytest.fixture
def web(system):
    """An HTTP client of the web app, served by uvicorn from a thread."""
    with (
        serve_in_thread(create_app("queued"), free_port()) as base,
        httpx.Client(base_url=base, timeout=30) as http,
    ):
        yield http


def start_worker(processes, *args: str, app: str = APP, env: dict | None = None):
    return processes.start(
        "worker", app, "--processes", "1", "--log-level", "ERROR", *args, env=env
    )


def group(name: str) -> dict:
    [topic] = snapshot(tasks.app.client)["topics"]
    return next(g for g in topic["groups"] if g["name"] == name)


def settled(name: str, done: int) -> bool:
    g = group(name)
    return g["done"] >= done and g["pending"] == 0 and g["lag"] == 0


def table(name: str) -> int:
    conn = db.connect()
    try:
        return db.counts(conn)[name]
    finally:
        conn.close()


def test_fifty_sign_ups_send_fifty_emails_each_once_and_fan_out_to_analytics(
    system, web, processes
):
    worker = start_worker(processes, "--concurrency", "8")
    users = [(f"user{i}@example.com", f"User {i}") for i in range(50)]

    answers = [web.post("/api/signup", json={"email": e, "name": n}) for e, n in users]

    assert [a.status_code for a in answers] == [201] * 50
    assert wait_for(lambda: system.count()[0] >= 50 and settled("analytics", 50), timeout=60)
    assert wait_for(lambda: settled("mailer", 50), timeout=30)
    received = Counter(m["rcpt_to"] for m in system.messages())
    assert received == Counter(e for e, _ in users)  # every user, each exactly once
    assert system.count() == (50, 50)
    assert table("welcome_emails") == 50
    assert table("signup_events") == 50  # the analytics group got every sign-up
    assert group("analytics")["done"] == 50 and group("mailer")["dead"] == 0
    assert worker.poll() is None


def test_a_resend_for_the_same_user_sends_no_second_email(system, web, processes):
    worker = start_worker(processes)
    first = web.post("/api/signup", json={"email": "ann@example.com", "name": "Ann"}).json()
    assert wait_for(lambda: system.count()[0] == 1 and settled("mailer", 1), timeout=30)

    again = web.post("/api/signup", json={"email": "ann@example.com", "name": "Ann"})
    resend = web.post(f"/api/users/{first['id']}/welcome").json()
    # the same dedup key: no new message at all
    assert again.status_code == 200 and again.json()["created"] is False
    assert again.json()["message_id"] == resend["message_id"] == first["message_id"]
    # a new message for the same user (say, after the dedup window): the task runs again
    # and finds the e-mail recorded as sent
    job = tasks.send_welcome_email.send(first["id"], "ann@example.com", "Ann")
    assert job.result(timeout=30) == "already sent"

    assert system.count() == (1, 1)
    assert (
        web.get(f"/api/users/{first['id']}").json()["welcome_email"]["job_id"]
        == first["message_id"]
    )
    assert worker.poll() is None


CRASHING_APP = '''
"""The example's app, but the worker process dies right after the e-mail is sent and
recorded, before the queue acknowledges the message (once: a marker file says so)."""
import os

from examples.registration import tasks
from examples.registration.tasks import app  # noqa: F401

original = tasks.send_welcome_email.fn


def send_then_die(*args, **kwargs):
    result = original(*args, **kwargs)
    if not os.path.exists(os.environ["CRASH_MARK"]):
        open(os.environ["CRASH_MARK"], "w").close()
        os._exit(9)
    return result


tasks.send_welcome_email.fn = send_then_die
'''


def test_a_worker_killed_between_sending_and_acknowledging_does_not_send_twice(
    system, web, processes, tmp_path
):
    (tmp_path / "crashing_app.py").write_text(textwrap.dedent(CRASHING_APP))
    env = {"PYTHONPATH": f"{ROOT}:{tmp_path}", "CRASH_MARK": str(tmp_path / "crashed")}
    crashing = start_worker(
        processes,
        "--visibility-timeout",
        "1",
        "--topic",
        tasks.TOPIC,
        app="crashing_app:app",
        env=env,
    )
    user = web.post("/api/signup", json={"email": "bob@example.com", "name": "Bob"}).json()

    assert crashing.wait(30) == 9
    assert system.count() == (1, 1)  # sent, and the message is still pending
    assert group("mailer")["pending"] == 1 and group("mailer")["done"] == 0

    start_worker(processes, "--visibility-timeout", "1")  # takes the message over
    assert wait_for(lambda: settled("mailer", 1), timeout=30)
    assert system.count() == (1, 1)
    conn = sqlite3.connect(str(tmp_path / "registration.db"))
    [(job_id,)] = conn.execute("SELECT job_id FROM welcome_emails").fetchall()
    conn.close()
    assert job_id == user["message_id"]


SMTP_CRASHING_APP = '''
"""The example's app, but the worker process dies right after the SMTP server accepted the
e-mail, before anything else is recorded (once: a marker file says so)."""
import os
import smtplib

from examples.registration.tasks import app  # noqa: F401

original = smtplib.SMTP.send_message


def send_then_die(self, *args, **kwargs):
    result = original(self, *args, **kwargs)
    if not os.path.exists(os.environ["CRASH_MARK"]):
        open(os.environ["CRASH_MARK"], "w").close()
        os._exit(9)
    return result


smtplib.SMTP.send_message = send_then_die
'''


def test_a_worker_killed_right_after_the_smtp_send_is_fenced_by_the_step_key(
    system, web, processes, tmp_path
):
    """The window no lock closes: the e-mail went out, nothing recorded it. The next run
    sends it again with the same step.key as its Message-ID, and the receiving side drops
    the duplicate (as a mail API with idempotency keys does)."""
    (tmp_path / "smtp_crashing_app.py").write_text(textwrap.dedent(SMTP_CRASHING_APP))
    env = {"PYTHONPATH": f"{ROOT}:{tmp_path}", "CRASH_MARK": str(tmp_path / "crashed")}
    crashing = start_worker(
        processes, "--visibility-timeout", "1", app="smtp_crashing_app:app", env=env
    )
    web.post("/api/signup", json={"email": "cy@example.com", "name": "Cy"})
    assert crashing.wait(30) == 9
    assert system.count() == (1, 1) and system.dropped() == 0
    [first] = system.messages()

    start_worker(processes, "--visibility-timeout", "1")  # takes the message over
    assert wait_for(lambda: settled("mailer", 1), timeout=30)
    assert system.dropped() == 1  # sent again, same key: dropped by the receiver
    assert system.count() == (1, 1)
    assert [m["message_id"] for m in system.messages()] == [first["message_id"]]
    assert first["message_id"].startswith("<") and "@registration.example>" in first["message_id"]
    assert table("welcome_emails") == 1


@pytest.mark.parametrize(
    "body",
    [
        {"email": "not-an-address", "name": "Eve"},
        {"email": "eve@", "name": "Eve"},
        {"email": "eve@example", "name": "Eve"},
        {"email": "eve smith@example.com", "name": "Eve"},
        {"email": "eve@example.com", "name": "   "},
        {"email": "eve@example.com"},
        {"name": "Eve"},
    ],
)
def test_bad_input_is_a_422_and_nothing_is_written_or_sent(body, system, web):
    answer = web.post("/api/signup", json=body)

    assert answer.status_code == 422
    assert table("users") == 0
    [topic] = snapshot(tasks.app.client)["topics"]
    assert topic["length"] == 0  # no task was sent
    assert system.count() == (0, 0)


def test_the_html_form_signs_up_and_shows_errors(system, web):
    assert 'name="email"' in web.get("/").text

    bad = web.post("/signup", data={"email": "nope", "name": "Zed"})
    good = web.post("/signup", data={"email": "zed@example.com", "name": "Zed <b>"})

    assert bad.status_code == 422 and "not a valid e-mail address" in bad.text
    assert 'value="nope"' in bad.text  # what was typed is kept
    assert good.status_code == 201 and "Welcome, Zed &lt;b&gt;!" in good.text
    assert table("users") == 1
    [topic] = snapshot(tasks.app.client)["topics"]
    assert topic["length"] == 1


def test_the_example_tested_with_redismq_testing_as_a_user_would(system, web):
    """The example's own unit test, with the helpers redismq ships for users' tests."""
    from redismq.testing import run_until_idle

    for i in range(5):
        web.post("/api/signup", json={"email": f"user{i}@example.com", "name": f"User {i}"})
    counts = run_until_idle(tasks.app)
    assert counts.processed == 10  # 5 e-mails (mailer) + 5 events (analytics)
    assert counts.failed == counts.dead == 0
    assert len(system.messages()) == 5
