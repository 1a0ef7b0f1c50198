"""The registration example keeps the lecture's promise: once a sign-up is committed, the
user gets the welcome e-mail, whatever Redis does meanwhile. Sign-ups from concurrent
clients over real HTTP while Redis (with an AOF) is restarted, then down for 5 s; the
worker relays the example's outbox (`--outbox`). No sign-up fails because Redis was away,
and every committed user gets exactly one e-mail."""

from __future__ import annotations

import threading
import time
from collections import Counter

import httpx
import pytest
from conftest import wait_for

from examples.registration import db, tasks
from examples.registration.smtp_sink import SmtpSink, free_port
from examples.registration.web import create_app, serve_in_thread
from redismq.server import LocalServer
from redismq.status import snapshot

pytestmark = pytest.mark.fault


@pytest.fixture
def durable_redis():
    """A Redis of its own that writes every change to its AOF before answering."""
    with LocalServer(persistence=True, extra_args=("--appendfsync", "always")) as srv:
        yield srv


@pytest.fixture
def system(durable_redis, tmp_path, monkeypatch):
    with SmtpSink(str(tmp_path / "mailbox.db")) as sink:
        monkeypatch.setenv("REDISMQ_URL", durable_redis.url)
        monkeypatch.setenv("REGISTRATION_DB", str(tmp_path / "registration.db"))
        monkeypatch.setenv("SMTP_HOST", sink.host)
        monkeypatch.setenv("SMTP_PORT", str(sink.port))
        tasks.app.connect(None)
        tasks.app.client.create_topic(tasks.TOPIC)
        yield sink
        tasks.app.connect(None)


def users() -> list[str]:
    conn = db.connect()
    try:
        return [r["email"] for r in conn.execute("SELECT email FROM users")]
    finally:
        conn.close()


def test_every_committed_sign_up_gets_one_email_while_redis_restarts_and_is_down(
    system, durable_redis, processes, tmp_path
):
    worker = processes.start(
        "worker", "examples.registration.tasks:app", "--processes", "1", "--concurrency", "32",
        "--outbox", f"sqlite:///{tmp_path / 'registration.db'}", "--log-level", "ERROR",
    )  # fmt: skip
    answers: Counter[int] = Counter()
    failures: list[str] = []
    stop = threading.Event()
    lock = threading.Lock()
    signed = 0

    with serve_in_thread(create_app(), free_port()) as base:

        def client(n: int) -> None:
            nonlocal signed
            with httpx.Client(base_url=base, timeout=30) as http:
                i = 0
                while not stop.is_set():
                    answer = http.post(
                        "/api/signup", json={"email": f"u{n}-{i}@example.com", "name": f"U {n}"}
                    )
                    with lock:
                        answers[answer.status_code] += 1
                        signed += 1
                        if answer.status_code != 201:
                            failures.append(answer.text[:300])
                    i += 1
                    time.sleep(0.1)

        clients = [threading.Thread(target=client, args=(n,)) for n in range(4)]
        for c in clients:
            c.start()
        try:
            assert wait_for(lambda: system.count()[0] >= 20, timeout=60)
            durable_redis.restart()  # restarted: back within a second
            time.sleep(1.0)
            durable_redis.kill()
            time.sleep(5.0)  # down for 5 s
            during = signed
            durable_redis.restart()
            assert wait_for(lambda: signed > during + 20, timeout=30)
        finally:
            stop.set()
            for c in clients:
                c.join(60)

    assert not failures, failures[:3]  # no sign-up failed because Redis was away
    assert answers[201] == signed
    committed = users()
    assert len(committed) == signed
    assert wait_for(lambda: system.count()[0] >= len(committed), timeout=120), (
        system.count(),
        len(committed),
    )
    time.sleep(1.0)  # a second e-mail, if there were one, would arrive now
    received = Counter(m["rcpt_to"] for m in system.messages())
    assert received == Counter(committed)  # every committed user, exactly once
    assert worker.poll() is None


def test_a_sign_up_writes_one_outbox_row_and_never_talks_to_redis(system, durable_redis):
    from examples.registration.web import outbox
    from redismq.relay import Relay

    durable_redis.kill()  # Redis is away: the sign-up does not notice
    with (
        serve_in_thread(create_app(), free_port()) as base,
        httpx.Client(base_url=base, timeout=30) as http,
    ):
        first = http.post("/api/signup", json={"email": "ann@example.com", "name": "Ann"})
        again = http.post("/api/signup", json={"email": "ann@example.com", "name": "Ann"})
        resend = http.post(f"/api/users/{first.json()['id']}/welcome")
    assert (first.status_code, again.status_code, resend.status_code) == (201, 200, 200)
    assert again.json()["created"] is False and "outbox_id" not in again.json()
    assert outbox().lag().waiting == 2  # the sign-up's row and the resend's

    durable_redis.restart()
    relay = Relay(outbox())
    assert relay.relay_once().sent == 2
    [topic] = snapshot(tasks.app.client)["topics"]
    assert topic["length"] == 1  # the resend had the same dedup key: one message
