"""The transactional outbox on SQLite and on a real PostgreSQL: a row commits or rolls back
with the app's transaction, the relay sends rows in order with a dedup key of their own,
a send whose mark was lost is a no-op, relays running at once send each row once, and
the lag shows in status and the metrics."""

from __future__ import annotations

import itertools
import json
import sqlite3
import threading
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from conftest import wait_for
from sqlalchemy.orm import Session

from redismq import App, Client, InvalidMessage, JobNotFound
from redismq.cli.main import main
from redismq.outbox import Outbox, OutboxError
from redismq.relay import Relay
from redismq.routing import queue_for_key
from redismq.server import LocalServer, _free_port
from redismq.status import snapshot
from tests.apps.outbox_app import app as worker_app

TOPIC = "signups"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path) -> str:
    """An empty database: a SQLite file, or a new database on the test PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/app.db"
    return request.getfixturevalue("postgres").new_database()


@pytest.fixture
def outbox_app(app: App) -> App:
    @app.task(topic=TOPIC, name="welcome")
    def welcome(user_id: int) -> int:
        return user_id

    return app


@pytest.fixture
def outbox(outbox_app: App, db_url: str):
    ob = Outbox(outbox_app, db_url)
    ob.create_table()
    yield ob
    ob.close()


def queued(client: Client, topic: str = TOPIC) -> list[dict[str, Any]]:
    """Every message in the topic's streams: (queue, body, key), in stream order per queue."""
    t = client.topic(topic, create=False)
    out = []
    for q in range(t.queues):
        stream = client.router.queue_keys(topic, q).stream
        for _, fields in client.router.queue_broker(t, q).redis.xrange(stream):
            key = fields.get(b"key")
            out.append({"queue": q, "body": json.loads(fields[b"body"]), "key": key})
    return out


def deduplicated(client: Client, topic: str = TOPIC) -> int:
    t = client.topic(topic, create=False)
    return sum(
        int(client.router.queue_broker(t, q).redis.hget(
            client.router.queue_keys(topic, q).counters, "deduplicated") or 0)
        for q in range(t.queues)
    )  # fmt: skip


def relay_all(ob: Outbox, **options: Any) -> int:
    relay = Relay(ob, **options)
    total = 0
    while (result := relay.relay_once()).rows:
        total += result.sent
    return total


def sqlite_outbox(client: Client, tmp_path: Any, rows: int) -> Outbox:
    """An outbox in a new SQLite file holding `rows` messages {"n": 0..rows-1} for TOPIC."""
    ob = Outbox(client, f"sqlite:///{tmp_path}/app.db")
    ob.create_table()
    with ob.engine.begin() as conn:
        for n in range(rows):
            ob.send_message(conn, TOPIC, {"n": n})
    return ob


def args_of(messages: list[dict[str, Any]]) -> list[Any]:
    return sorted(m["body"]["args"][0] for m in messages)


def test_a_row_commits_with_the_transaction_and_a_rolled_back_one_is_never_sent(
    outbox, outbox_app, db_url
):
    engine = sa.create_engine(db_url)
    with engine.begin() as conn:
        outbox.send(conn, outbox_app.tasks["welcome"], 1, dedup_key="user-1")
    with pytest.raises(RuntimeError), engine.begin() as conn:
        outbox.send(conn, outbox_app.tasks["welcome"], 2)
        raise RuntimeError("the sign-up failed after the outbox row was written")
    engine.dispose()
    assert outbox.lag().waiting == 1

    assert relay_all(outbox) == 1

    [message] = queued(outbox_app.client)
    assert message["body"] == {"task": "welcome", "args": [1], "kwargs": {}}
    assert outbox.lag().waiting == 0


def test_send_takes_a_dbapi_connection_a_sqlalchemy_connection_or_a_session(
    outbox, outbox_app, db_url
):
    task = outbox_app.tasks["welcome"]
    if db_url.startswith("sqlite"):
        raw = sqlite3.connect(db_url.removeprefix("sqlite:///"))
    else:
        import psycopg

        raw = psycopg.connect(db_url.replace("postgresql+psycopg", "postgresql"))
    outbox.send(raw, task, 1)
    raw.commit()
    raw.close()
    engine = sa.create_engine(db_url)
    with engine.begin() as conn:
        outbox.send(conn, task, 2)
    with Session(engine) as session, session.begin():
        outbox.send(session, task, 3)
    engine.dispose()

    assert relay_all(outbox) == 3
    assert args_of(queued(outbox_app.client)) == [1, 2, 3]


def test_send_message_checks_the_message_before_writing_the_row(outbox, db_url):
    engine = sa.create_engine(db_url)
    with engine.begin() as conn:
        with pytest.raises(InvalidMessage):
            outbox.send_message(conn, TOPIC, {"not": {1, 2}})
        with pytest.raises(InvalidMessage):
            outbox.send_message(conn, "bad topic", {})
        with pytest.raises(OutboxError, match="DB-API connection"):
            outbox.send_message(object(), TOPIC, {})
        with pytest.raises(InvalidMessage, match="the outbox's own"):
            outbox.send_message(conn, TOPIC, {}, headers={"redismq-outbox-job": "[]"})
        outbox.send_message(conn, TOPIC, b"\x00raw bytes", key="k", headers={"h": "v"})
    engine.dispose()
    assert outbox.lag().waiting == 1


@pytest.mark.parametrize("column, value", [("body", b"{not json"), ("headers", "oops")])
def test_a_row_someone_spoiled_is_one_warning_and_the_others_go(
    outbox, outbox_app, db_url, caplog, column, value
):
    """A row whose body or headers were written by hand (or by another service) and cannot
    be read: it waits, named once in the log; the rows around it are sent."""
    engine = sa.create_engine(db_url)
    with engine.begin() as conn:
        uids = [outbox.send_message(conn, TOPIC, {"n": n}) for n in range(3)]
        t = outbox.table
        conn.execute(sa.update(t).where(t.c.uid == uids[1]).values({column: value}))
        [bad] = conn.execute(sa.select(t.c.id).where(t.c.uid == uids[1])).scalars()
    engine.dispose()
    relay = Relay(outbox)
    with caplog.at_level("WARNING", logger="redismq"):
        first, again = relay.relay_once(), relay.relay_once()
    relay.close()
    assert (first.sent, again.sent) == (2, 0)
    assert sorted(m["body"]["n"] for m in queued(outbox_app.client)) == [0, 2]
    assert outbox.lag().waiting == 1
    [line] = [r.getMessage() for r in caplog.records if f"row {bad} " in r.getMessage()]
    assert column in line


def test_keyed_rows_reach_their_queue_in_the_order_they_were_written(outbox, outbox_app, db_url):
    engine = sa.create_engine(db_url)
    with engine.begin() as conn:
        for i in range(60):
            outbox.send_message(conn, TOPIC, {"n": i}, key=f"account-{i % 3}")
    engine.dispose()

    assert relay_all(outbox, batch=7) == 60

    messages = queued(outbox_app.client)
    for account in range(3):
        mine = [m["body"]["n"] for m in messages if m["key"] == f"account-{account}".encode()]
        assert mine == list(range(account, 60, 3))


def test_a_row_sent_but_not_marked_is_sent_again_as_a_no_op(outbox, outbox_app, monkeypatch):
    engine = outbox.engine
    with engine.begin() as conn:
        for i in range(5):
            outbox.send(conn, outbox_app.tasks["welcome"], i)
    real_mark = Outbox.mark_sent

    def die_before_marking(self, conn, sent):
        raise sa.exc.OperationalError("UPDATE", {}, Exception("the relay died here"))

    monkeypatch.setattr(Outbox, "mark_sent", die_before_marking)
    with pytest.raises(OutboxError, match="the relay died here"):
        Relay(outbox).relay_once()
    assert len(queued(outbox_app.client)) == 5 and outbox.lag().waiting == 5

    monkeypatch.setattr(Outbox, "mark_sent", real_mark)
    assert relay_all(outbox) == 5

    assert args_of(queued(outbox_app.client)) == [0, 1, 2, 3, 4]  # not ten
    assert deduplicated(outbox_app.client) == 5
    assert outbox.lag().waiting == 0


def test_two_relays_at_once_send_every_row_once(outbox, outbox_app, db_url):
    with outbox.engine.begin() as conn:
        for i in range(400):
            outbox.send(conn, outbox_app.tasks["welcome"], i)
    relays = [Outbox(outbox_app, db_url) for _ in range(2)]
    totals = [0, 0]

    def run(n: int) -> None:
        totals[n] = relay_all(relays[n], batch=20)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for r in relays:
        r.close()

    assert args_of(queued(outbox_app.client)) == list(range(400))
    assert outbox.lag().waiting == 0
    if outbox.locks_rows:  # SKIP LOCKED: the two relays never even tried the same row
        assert sum(totals) == 400 and deduplicated(outbox_app.client) == 0


def test_a_keyed_row_waits_for_an_older_row_of_its_key_that_another_relay_holds(
    outbox_app, postgres
):
    db_url = postgres.new_database()
    outbox = Outbox(outbox_app, db_url)
    outbox.create_table()
    assert outbox.locks_rows
    with outbox.engine.begin() as conn:
        outbox.send_message(conn, TOPIC, {"n": 0}, key="a")
        outbox.send_message(conn, TOPIC, {"n": 1}, key="a")
        outbox.send_message(conn, TOPIC, {"n": 2}, key="b")
    other = sa.create_engine(db_url)
    with other.begin() as held:  # another relay busy with the first row
        held.execute(sa.text("SELECT id FROM redismq_outbox WHERE id = 1 FOR UPDATE"))
        result = Relay(outbox).relay_once()
        assert (result.sent, result.held) == (1, 1)
        assert [m["body"]["n"] for m in queued(outbox_app.client)] == [2]
    other.dispose()
    assert relay_all(outbox) == 2
    a = [m["body"]["n"] for m in queued(outbox_app.client) if m["key"] == b"a"]
    assert a == [0, 1]
    outbox.close()


def test_sent_rows_are_deleted_after_the_window_and_the_lag_is_reported(outbox, outbox_app, db_url):
    with outbox.engine.begin() as conn:
        for i in range(3):
            outbox.send(conn, outbox_app.tasks["welcome"], i)
    relay = Relay(outbox, keep_sent=3600)
    relay.maintain(force=True)
    [report] = snapshot(outbox_app.client)["outboxes"]
    assert report["name"] == outbox.name and report["waiting"] == 3
    assert report["oldest_age"] > 0 and report["error"] is None

    relay.relay_once()
    relay.maintain(force=True)
    assert snapshot(outbox_app.client)["outboxes"][0]["waiting"] == 0
    with outbox.engine.connect() as conn:  # sent rows are kept for the window
        assert conn.execute(sa.text("SELECT COUNT(*) FROM redismq_outbox")).scalar() == 3
    Relay(outbox, keep_sent=0).maintain(force=True)
    with outbox.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT COUNT(*) FROM redismq_outbox")).scalar() == 0


def test_a_missing_table_is_one_clear_error(outbox_app, tmp_path):
    ob = Outbox(outbox_app, f"sqlite:///{tmp_path}/empty.db")
    with pytest.raises(OutboxError, match="redismq outbox create"):
        Relay(ob).relay_once()
    ob.close()


def test_the_table_indexes_waiting_rows_by_key_and_holds_a_large_body_on_mysql():
    """The relay looks up the oldest waiting row of each key of a batch: an index of
    waiting rows by key keeps that from reading every waiting row (partial where the
    database has them). On MySQL a BLOB holds 64 KB: the body is a LONGBLOB there."""
    pg = Outbox(None, "postgresql://app@db/app").sql()
    assert "ON redismq_outbox (msg_key, id) WHERE sent_at IS NULL" in pg
    assert (
        "ON redismq_outbox (msg_key, id) WHERE sent_at IS NULL" in Outbox(None, "sqlite:///x").sql()
    )
    mysql = Outbox(None, "mysql+pymysql://app@db/app").sql()
    assert "body LONGBLOB NOT NULL" in mysql and "(msg_key(191), id)" in mysql


def test_cli_shows_and_creates_the_table_and_refuses_a_bad_url(tmp_path):
    runner = CliRunner()
    shown = runner.invoke(main, ["outbox", "sql", "postgresql://app@db/app"])
    assert shown.exit_code == 0
    assert "CREATE TABLE redismq_outbox" in shown.output and "BIGSERIAL" in shown.output
    created = runner.invoke(main, ["outbox", "create", f"sqlite:///{tmp_path}/a.db"])
    assert created.exit_code == 0, created.output
    lag = runner.invoke(main, ["outbox", "status", f"sqlite:///{tmp_path}/a.db", "--json"])
    assert json.loads(lag.output)["waiting"] == 0
    for bad in ("nonsense", "oracle+nothing://x/y"):
        refused = runner.invoke(main, ["outbox", "sql", bad])
        assert refused.exit_code == 1
        assert refused.output.startswith("error:") and "Traceback" not in refused.output


def test_a_worker_with_outbox_relays_it_and_its_lag_shows_in_status_and_metrics(
    url, processes, tmp_path
):
    worker_app.connect(url)
    db = f"sqlite:///{tmp_path}/app.db"
    ob = Outbox(worker_app, db)
    ob.create_table()
    with ob.engine.begin() as conn:
        for i in range(20):
            ob.send(conn, worker_app.tasks["welcome"], i)
    port = _free_port()
    worker = processes.start(
        "worker", "tests.apps.outbox_app:app", "--url", url, "--processes", "1", "--outbox", db,
        "--metrics-port", str(port), "--log-level", "WARNING",
    )  # fmt: skip

    def done() -> int:
        topics = snapshot(worker_app.client)["topics"]
        return topics[0]["groups"][0]["done"] if topics and topics[0]["groups"] else 0

    assert wait_for(lambda: done() == 20, timeout=60)

    def reported() -> list[tuple[str, int]]:
        return [(r["name"], r["waiting"]) for r in snapshot(worker_app.client)["outboxes"]]

    def scraped() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            return reply.read().decode()

    # A report is written every few seconds: one from before the last rows went may say
    # they wait.
    assert wait_for(lambda: reported() == [(ob.name, 0)], timeout=10), reported()
    waiting = f'redismq_outbox_waiting{{outbox="{ob.name}"}} 0.0'
    assert wait_for(lambda: waiting in scraped(), timeout=10), scraped()
    text = CliRunner().invoke(main, ["status", "--url", url], terminal_width=200)
    assert "Outboxes" in text.output and "app.db#redismq_outbox" in text.output
    assert worker.poll() is None
    ob.close()
    worker_app.connect(None)


def test_rows_for_a_broker_that_is_away_wait_while_the_others_go(tmp_path):
    from redismq.brokers import add_broker

    with LocalServer() as meta, LocalServer() as up, LocalServer(persistence=True) as away:
        client = Client(meta.url)
        add_broker(client, "up", up.url)
        add_broker(client, "away", away.url)
        client.create_topic(TOPIC, queues=4)
        assert set(client.topic(TOPIC).placement) == {"up", "away"}
        ob = sqlite_outbox(client, tmp_path, rows=40)
        away.kill()

        first = Relay(ob).relay_once()

        assert 0 < first.sent < 40 and first.sent + first.held + first.failed == 40
        assert ob.lag().waiting == 40 - first.sent
        away.restart()
        assert relay_all(ob) == 40 - first.sent
        assert sorted(m["body"]["n"] for m in queued(client)) == list(range(40))
        ob.close()
        client.close()


def test_rows_of_one_away_broker_sent_at_once_do_not_end_the_pass_for_the_others(tmp_path):
    """The relay sends several rows at once. When the first of them all went to the one
    broker that is away, their failures (each after its send timeout) counted as many
    brokers away: the pass ended, and the live broker's rows waited for the next one
    (1 run of CI in a few met it in the test above, whose rows go to random queues).
    Here the first rows go to the away broker on purpose."""
    from redismq.brokers import add_broker
    from redismq.relay import CONCURRENCY

    with LocalServer() as meta, LocalServer() as up, LocalServer() as away:
        client = Client(meta.url)
        add_broker(client, "up", up.url)
        add_broker(client, "away", away.url)
        placement = client.create_topic(TOPIC, queues=4).placement
        assert set(placement) == {"up", "away"}

        def keys_to(broker: str) -> Iterator[str]:
            return (
                k
                for k in (f"signup-{n}" for n in itertools.count())
                if placement[queue_for_key(k, 4)] == broker
            )

        to_away, to_up = keys_to("away"), keys_to("up")
        firsts = [next(to_away) for _ in range(2 * CONCURRENCY)]
        rest = [next(to_up) for _ in range(10)]
        ob = Outbox(client, f"sqlite:///{tmp_path}/app.db")
        ob.create_table()
        with ob.engine.begin() as conn:
            for key in firsts + rest:
                ob.send_message(conn, TOPIC, {"key": key}, dedup_key=key)
        away.kill()
        first = Relay(ob).relay_once()
        assert (first.sent, first.sent + first.held + first.failed) == (10, len(firsts) + 10)
        on_up = up.client()
        sent = [
            json.loads(fields[b"body"])["key"]
            for q in range(4)
            if placement[q] == "up"
            for _, fields in on_up.xrange(client.router.queue_keys(TOPIC, q).stream)
        ]
        assert sorted(sent) == sorted(rest)
        on_up.close()
        ob.close()
        client.close()


def test_a_row_that_cannot_go_among_flowing_rows_is_logged_once(outbox, outbox_app, db_url, caplog):
    """A spoiled row stays while new rows keep flowing: the relay says so once (its own
    line, and one 'retrying'), not at every pass that also sent something."""
    engine = sa.create_engine(db_url)
    with engine.begin() as conn:
        uid = outbox.send_message(conn, TOPIC, {"n": -1})
        t = outbox.table
        conn.execute(sa.update(t).where(t.c.uid == uid).values(body=b"{oops"))
    relay, stop = Relay(outbox, interval=0.02), threading.Event()
    runner = threading.Thread(target=relay.run, args=(stop,))
    with caplog.at_level("INFO", logger="redismq.outbox"):
        runner.start()
        for n in range(10):
            with engine.begin() as conn:
                outbox.send_message(conn, TOPIC, {"n": n})
            assert wait_for(lambda n=n: relay.sent == n + 1)
        stop.set()
        runner.join()
    relay.close()
    engine.dispose()
    lines = [r.getMessage() for r in caplog.records]
    assert len([line for line in lines if "retrying" in line]) == 1, lines
    assert len([line for line in lines if "not sent" in line]) == 1, lines
    assert not [line for line in lines if "sending again" in line], lines


def test_after_an_outage_the_oldest_rows_go_first(tmp_path):
    with LocalServer() as meta, LocalServer(persistence=True) as broker:
        from redismq.brokers import add_broker

        client = Client(meta.url)
        add_broker(client, "b", broker.url)
        client.create_topic(TOPIC, queues=1)
        ob = sqlite_outbox(client, tmp_path, rows=250)
        broker.kill()
        relay = Relay(ob)
        assert [relay.relay_once().sent for _ in range(2)] == [0, 0]
        broker.restart()
        assert relay.relay_once().sent == 100
        assert sorted(m["body"]["n"] for m in queued(client)) == list(range(100))
        relay.close()
        ob.close()
        client.close()


def test_rows_held_behind_a_row_that_cannot_go_are_looked_at_with_backoff(
    outbox, outbox_app, db_url, monkeypatch
):
    """A spoiled keyed row holds every later row of its key (their order). The relay looks
    over them again with backoff, not in back-to-back passes for as long as it runs."""
    engine = sa.create_engine(db_url)
    with engine.begin() as conn:
        uid = outbox.send_message(conn, TOPIC, {"n": -1}, key="k")
        t = outbox.table
        conn.execute(sa.update(t).where(t.c.uid == uid).values(body=b"{oops"))
        for n in range(250):
            outbox.send_message(conn, TOPIC, {"n": n}, key="k")
    engine.dispose()
    relay, stop = Relay(outbox, interval=0.01), threading.Event()
    passes = []
    once = relay.relay_once
    monkeypatch.setattr(relay, "relay_once", lambda: passes.append(1) or once())
    runner = threading.Thread(target=relay.run, args=(stop,))
    runner.start()
    stop.wait(2.5)
    stop.set()
    runner.join()
    relay.close()
    # Backing off (0.1 s, then doubling up to the next row sent), 2.5 s hold about 7
    # passes (3 looks over the table's 3 batches); back to back, 60 or more.
    assert 3 <= len(passes) <= 24, len(passes)
    assert relay.sent == 0 and outbox.lag().waiting == 251


def test_the_id_outbox_send_returns_is_the_jobs_once_the_relay_sent_it(
    outbox, outbox_app, db_url, url
):
    from redismq.testing import run_until_idle

    engine = sa.create_engine(db_url)
    with engine.begin() as conn:
        job_id = outbox.send(conn, outbox_app.tasks["welcome"], 7, dedup_key="user-7")
        plain = outbox.send_message(conn, TOPIC, {"task": "welcome", "args": [8], "kwargs": {}})
    engine.dispose()
    assert relay_all(Outbox(Client(url), db_url)) == 2  # as `redismq outbox relay` does
    [message] = [m for m in queued(outbox_app.client) if m["body"]["args"] == [7]]
    assert "redismq-outbox-job" not in json.dumps(message)  # the row's own header stays
    job = outbox_app.job(job_id)
    assert (job.id, job.task, job.status()) == (job_id, "welcome", "queued")
    run_until_idle(outbox_app)
    assert job.result(timeout=5) == 7
    with pytest.raises(JobNotFound):  # a plain message has no job
        outbox_app.job(plain)


def test_a_full_batch_of_rows_that_cannot_go_does_not_hold_the_rows_after_it(tmp_path, url):
    """A batch whose every row fails for its own reason (here: a topic deleted, topics not
    created on send) is looked past; only an outage of every broker sends the relay back
    to the oldest rows."""
    client = Client(url, auto_create_topics=False)
    client.create_topic("gone", queues=1)
    client.create_topic(TOPIC, queues=1)
    ob = Outbox(client, f"sqlite:///{tmp_path}/app.db")
    ob.create_table()
    with ob.engine.begin() as conn:
        for n in range(100):
            ob.send_message(conn, "gone", {"n": n})
        ob.send_message(conn, TOPIC, {"n": 100})
    client.delete_topic("gone")
    relay = Relay(ob)
    sent = [relay.relay_once().sent for _ in range(3)]
    relay.close()
    assert sum(sent) == 1 and [m["body"]["n"] for m in queued(client)] == [100]
    ob.close()
    client.close()


def test_a_refused_row_that_went_later_is_no_longer_remembered(tmp_path, url):
    """The relay remembers a refused row's id to say why once, not at every pass; it kept
    the id after the row went, one more for every row ever refused, for the relay's life."""
    client = Client(url, auto_create_topics=False)
    ob = Outbox(client, f"sqlite:///{tmp_path}/app.db")
    ob.create_table()
    with ob.engine.begin() as conn:
        for n in range(3):
            ob.send_message(conn, "later", {"n": n})
    relay = Relay(ob)
    refused = relay.relay_once()
    assert (refused.sent, refused.failed) == (0, 3)
    assert len(relay._logged) == 3  # each refusal said once
    client.create_topic("later", queues=1)
    assert relay.relay_once().sent == 3
    assert relay._logged == set()
    relay.close()
    ob.close()
    client.close()
