"""The outbox relay as a real process (`redismq outbox relay`) on SQLite and PostgreSQL,
while Redis restarts, stays down for 5 s, and while the relay itself is SIGKILLed in the
middle of a batch: every committed row reaches its queue, none twice."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter

import pytest
from conftest import code_after_sigterm, fill_pipe, unread_pipe, wait_for
from test_outbox import deduplicated, queued

from redismq import App
from redismq.outbox import Outbox
from redismq.server import LocalServer

pytestmark = pytest.mark.fault
TOPIC = "signups"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/app.db"
    return request.getfixturevalue("postgres").new_database()


@pytest.fixture
def durable_redis():
    """A Redis of its own that writes every change to its AOF before answering, so that a
    restart or a kill loses nothing it acknowledged."""
    with LocalServer(persistence=True, extra_args=("--appendfsync", "always")) as srv:
        yield srv


@pytest.fixture
def setup(durable_redis, db_url):
    app = App(durable_redis.url)
    app.client.create_topic(TOPIC, 4)
    ob = Outbox(app, db_url)
    ob.create_table()
    yield app, ob
    ob.close()
    app.client.close()


def start_relay(processes, ob: Outbox, url: str, *args: str, **kwargs):
    return processes.start(
        "outbox", "relay", ob.db_url.render_as_string(hide_password=False), "--url", url,
        "--interval", "0.05", "--log-level", "WARNING", *args, **kwargs,
    )  # fmt: skip


def exactly_once(app: App, rows: int) -> None:
    seen = Counter(m["body"]["n"] for m in queued(app.client))
    assert sorted(seen) == list(range(rows)), "a committed row never reached its queue"
    assert max(seen.values()) == 1, "a row reached its queue twice"


def test_sends_ride_out_a_redis_restart_and_a_5s_outage(setup, durable_redis, processes):
    app, ob = setup
    relay = start_relay(processes, ob, durable_redis.url)
    written = 0
    stop = threading.Event()
    errors: list[BaseException] = []

    def write() -> None:  # the app: commits rows, never touches Redis
        nonlocal written
        try:
            while not stop.is_set():
                with ob.engine.begin() as conn:
                    ob.send_message(conn, TOPIC, {"n": written})
                written += 1
                time.sleep(0.005)
        except BaseException as exc:
            errors.append(exc)

    writer = threading.Thread(target=write)
    writer.start()
    try:
        assert wait_for(lambda: len(queued(app.client)) >= 50, timeout=30)
        durable_redis.restart()
        time.sleep(1.0)
        durable_redis.kill()
        time.sleep(5.0)  # down for 5 s while rows keep being committed
        during = written
        durable_redis.restart()
        assert wait_for(lambda: written > during + 50, timeout=30)
    finally:
        stop.set()
        writer.join(30)
    assert not errors

    assert wait_for(lambda: ob.lag().waiting == 0, timeout=60), ob.lag()
    exactly_once(app, written)
    assert relay.poll() is None, "the relay gave up while Redis was away"


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_relay_stops_though_nobody_reads_its_log(setup, durable_redis, processes):
    """With its log a full pipe and a line waiting for it (Redis went away), the stopped
    relay waited at its exit for that write, for good."""
    app, ob = setup
    with ob.engine.begin() as conn:
        ob.send_message(conn, TOPIC, {"n": 0})
    with unread_pipe() as log:
        relay = start_relay(processes, ob, durable_redis.url, stdout=log)
        assert wait_for(lambda: len(queued(app.client)) == 1, timeout=30)
        fill_pipe(log)
        durable_redis.kill()
        with ob.engine.begin() as conn:
            ob.send_message(conn, TOPIC, {"n": 1})
        time.sleep(3.0)  # its lines about Redis being away, waiting on the pipe
        code = code_after_sigterm(relay, 30)
    assert code == 0


def test_a_relay_killed_mid_batch_loses_nothing_and_sends_nothing_twice(
    setup, durable_redis, processes
):
    app, ob = setup
    rows = 3000
    with ob.engine.begin() as conn:
        for n in range(rows):
            ob.send_message(conn, TOPIC, {"n": n})
    kills = 0
    while kills < 3:
        before = len(queued(app.client))
        relay = start_relay(processes, ob, durable_redis.url, "--batch", "500")
        # as soon as this relay has sent part of a batch (rows sent, not yet marked): kill
        assert wait_for(lambda b=before: len(queued(app.client)) >= b + 20, timeout=30)
        os.kill(relay.pid, signal.SIGKILL)
        relay.wait(10)
        kills += 1

    start_relay(processes, ob, durable_redis.url, "--batch", "500")
    assert wait_for(lambda: ob.lag().waiting == 0, timeout=60), ob.lag()
    exactly_once(app, rows)
    # the relays that followed sent again what a killed one had sent but not marked
    assert deduplicated(app.client) > 0


def test_a_worker_whose_outbox_table_is_locked_still_stops(postgres, durable_redis, processes):
    """A migration holds the outbox table: the relay's queries wait with no end in sight.
    The worker's stop waits for the relay thread a while, then leaves it (and the final
    lag report, which would wait too) instead of hanging until SIGKILL."""
    db = postgres.new_database()
    ob = Outbox(App(durable_redis.url), db)
    ob.create_table()
    with ob.engine.connect() as holder:
        holder.exec_driver_sql(f"LOCK TABLE {ob.table.name} IN ACCESS EXCLUSIVE MODE")
        worker = processes.start(
            "worker", "tests.apps.outbox_app:app", "--url", durable_redis.url, "--processes", "1",
            "--outbox", db, "--log-level", "WARNING",
        )  # fmt: skip

        def relay_waits() -> bool:  # one of its queries waits for the lock
            waiting = "SELECT count(*) FROM pg_locks WHERE NOT granted"
            with ob.engine.connect() as conn:
                return conn.exec_driver_sql(waiting).scalar() > 0

        assert wait_for(relay_waits, timeout=30)
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(40) == 0
        holder.rollback()
    ob.close()
