"""Rule 4 (outcome), rule 5 (time of retries) and rule 10 (bad entries), on a real server."""

from __future__ import annotations

import time
from datetime import UTC, date, datetime
from decimal import Decimal
from uuid import UUID

import pytest

from redismq import JobFailed
from redismq.keys import QueueKeys
from redismq.processing import BatchRunner
from redismq.status import topic_status


def group_row(client, topic: str, group: str) -> dict:
    return next(g for g in topic_status(client, topic)["groups"] if g["name"] == group)


def run_until_idle(client, app, topic: str, group: str = "workers", timeout: float = 10.0):
    """Process everything of one subscription in this process (retries included)."""
    sub = app.subscriptions[(topic, group)]
    consumer = client.consumer(topic, group, create=True)
    runner = BatchRunner(consumer, sub)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        batch = consumer.receive(count=100, block=0.1)
        if batch:
            runner.run(batch)
        elif consumer.backlog() == 0:
            return
    raise AssertionError("work was left after the timeout")


def test_success_acks_records_done_and_stores_the_result(client, app):
    @app.task(topic="math")
    def add(x, y):
        return x + y

    job = add.send(2, 3)
    assert job.status() == "queued"
    run_until_idle(client, app, "math")
    assert job.status() == "done"
    assert job.result(timeout=1) == 5
    row = group_row(client, "math", "workers")
    assert (row["done"], row["pending"], row["lag"]) == (1, 0, 0)


def test_redelivered_done_message_is_acked_not_rerun(client, app):
    runs = []

    @app.consumer("events", group="once")
    def handle(msg):
        runs.append(msg.id)

    client.create_topic("events", queues=1)
    mid = client.send("events", {"n": 1})
    run_until_idle(client, app, "events", "once")
    # The same message comes back (as after a lost XACK on failover): put it in the stream again.
    stream = QueueKeys("rmq", "events", 0).stream
    _, fields = client.meta.xrange(stream)[0]
    client.meta.xadd(stream, fields)
    run_until_idle(client, app, "events", "once")
    assert runs == [mid]
    assert group_row(client, "events", "once")["duplicates"] == 1


def test_failure_retries_with_backoff_then_dead_letters_with_the_error(client, app, monkeypatch):
    attempts = []
    # No jitter: the backoffs are 0.5 s, then 1 s: a retry may start up to 0.5 s late.
    monkeypatch.setattr("redismq.outcomes.random.uniform", lambda low, high: high)

    @app.task(topic="flaky", max_retries=2, backoff=0.5)
    def boom(n):
        attempts.append(time.monotonic())
        raise ValueError(f"bad {n}")

    job = boom.send(7)
    run_until_idle(client, app, "flaky")
    assert len(attempts) == 3
    gaps = [b - a for a, b in zip(attempts, attempts[1:], strict=False)]
    assert 0.5 <= gaps[0] < 1.0 and gaps[1] >= 1.0, gaps  # 0.5·2^attempt, not 0.5 each
    assert job.status() == "dead"
    with pytest.raises(JobFailed, match="ValueError: bad 7"):
        job.result(timeout=1)
    [dead] = client.dead_letters("flaky", "workers")
    assert dead.id == job.id and dead.attempts == 3 and "ValueError: bad 7" in dead.reason


def test_retry_is_per_group_and_does_not_disturb_another_group(client, app):
    calls = {"ok": 0, "failing": 0}

    @app.consumer("fanout", group="ok")
    def fine(msg):
        calls["ok"] += 1

    @app.consumer("fanout", group="failing", max_retries=1, backoff=0.01)
    def broken(msg):
        calls["failing"] += 1
        raise RuntimeError("down")

    client.create_topic("fanout", queues=2)
    client.send_many("fanout", [1, 2, 3])
    run_until_idle(client, app, "fanout", "failing")
    run_until_idle(client, app, "fanout", "ok")
    assert calls == {"ok": 3, "failing": 6}
    assert group_row(client, "fanout", "ok")["dead"] == 0
    assert group_row(client, "fanout", "failing")["dead"] == 3


def test_replayed_dead_letters_run_again_for_their_group_only(client, app):
    state = {"fail": True, "runs": 0, "other": 0}

    @app.consumer("replay", group="g", max_retries=0)
    def handler(msg):
        state["runs"] += 1
        if state["fail"]:
            raise RuntimeError("not yet")

    @app.consumer("replay", group="other")
    def other(msg):
        state["other"] += 1

    client.create_topic("replay", queues=2)
    client.send_many("replay", [1, 2])
    run_until_idle(client, app, "replay", "g")
    run_until_idle(client, app, "replay", "other")
    assert len(client.dead_letters("replay", "g")) == 2
    state["fail"] = False
    assert client.replay_dead_letters("replay", "g") == 2
    run_until_idle(client, app, "replay", "g")
    run_until_idle(client, app, "replay", "other")
    assert state == {"fail": False, "runs": 4, "other": 2}
    assert client.dead_letters("replay", "g") == []
    assert group_row(client, "replay", "g")["done"] == 2


def test_a_replayed_dead_job_reads_as_its_new_run_does(client, app):
    """A task dead-lettered, then replayed: it is queued again (cancel can stop it), and
    once it succeeds its status is done and its result is the new run's value, not the
    old failure."""
    state = {"fail": True}

    @app.task(topic="fix", max_retries=0)
    def charge(n):
        if state["fail"]:
            raise RuntimeError("card declined")
        return n * 2

    first, second = charge.send(1), charge.send(2)
    run_until_idle(client, app, "fix")
    assert first.status() == "dead" and second.status() == "dead"
    state["fail"] = False
    assert client.replay_dead_letters("fix", "workers") == 2
    assert first.status() == "queued"
    assert second.cancel() is True
    run_until_idle(client, app, "fix")
    assert first.status() == "done"
    assert first.result(timeout=1) == 2
    assert first.describe()["result"] == 2
    assert second.status() == "cancelled"
    with pytest.raises(JobFailed, match="cancelled"):
        second.result(timeout=1)


def test_a_replayed_job_stopped_by_a_cancel_reads_no_old_attempt(client, app):
    """A cancel of a running job keeps the attempt it stopped in the job hash; a job that
    still ended dead (a task that raised while being stopped) and is replayed starts its
    count again (found by a review: it read the old attempt while queued)."""

    @app.task(topic="fix", max_retries=0)
    def charge(n):
        raise RuntimeError("card declined")

    job = charge.send(1)
    run_until_idle(client, app, "fix")
    # what the cancel script leaves of a job it stopped while it ran (attempt 1)
    client.meta.hset(client.router.queue_keys("fix", job.queue).job(job.id), "attempt", 1)
    assert job.describe()["attempts"] == 1
    assert client.replay_dead_letters("fix", "workers") == 1
    assert job.status() == "queued" and job.describe()["attempts"] == 0


def test_replaying_another_groups_dead_letters_leaves_the_tasks_job_alone(client, app):
    """A handler of another group on the task's topic fails and is replayed: the task's
    job keeps its result (done) and, when dead in its own group, stays dead."""

    @app.task(topic="orders", max_retries=0)
    def charge(n):
        if n < 0:
            raise ValueError("negative")
        return n * 2

    @app.consumer("orders", group="audit", max_retries=0)
    def audit(msg):
        raise RuntimeError("audit store down")

    paid, refused = charge.send(21), charge.send(-1)
    run_until_idle(client, app, "orders")
    run_until_idle(client, app, "orders", "audit")
    assert client.replay_dead_letters("orders", "audit") == 2
    assert paid.status() == "done" and paid.result(timeout=1) == 42
    assert refused.status() == "dead"
    with pytest.raises(JobFailed, match="negative"):
        refused.result(timeout=1)


@pytest.mark.parametrize(
    "fields, reason",
    [
        ({"garbage": "x"}, "lacks the field 'id'"),
        ({"id": "m1", "body": "{not json"}, "not valid JSON"),
        ({"id": "m2", "body": '"just a string"'}, "a task body must be an object"),
        ({"id": "m3", "body": '{"task": "nope", "args": []}'}, "unknown task 'nope'"),
        ({"id": "m4", "body": '{"task": "t.ok", "args": 5}'}, "'args' must be a list"),
        ({"id": b"\xff\xfe", "body": "{}"}, "not UTF-8"),
    ],
)
def test_hand_written_bad_entry_is_dead_lettered_with_the_reason(client, app, fields, reason):
    done = []

    @app.task(topic="hand", name="t.ok")
    def ok():
        done.append(1)

    client.create_topic("hand", queues=1)
    client.meta.xadd(QueueKeys("rmq", "hand", 0).stream, fields)
    ok.send()
    run_until_idle(client, app, "hand")
    [dead] = client.dead_letters("hand", "workers")
    assert reason in dead.reason
    assert done == [1]


def test_job_result_waits_for_completion(client, app):
    import threading

    @app.task(topic="wait")
    def slow():
        return "finished"

    job = slow.send()
    worker = threading.Thread(target=run_until_idle, args=(client, app, "wait"))
    timer = threading.Timer(0.3, worker.start)
    timer.start()
    assert job.result(timeout=10) == "finished"
    worker.join()


def test_none_results_are_stored_only_for_someone_waiting(client, app):
    import threading

    @app.task(topic="quiet")
    def nothing():
        return None

    unwatched = nothing.send()
    watched = nothing.send()
    got = []
    waiter = threading.Thread(target=lambda: got.append(watched.result(timeout=10)))
    waiter.start()
    assert wait_for_member(client, watched)
    run_until_idle(client, app, "quiet")
    waiter.join()
    assert got == [None]
    assert client.meta.exists(watched.keys.outcome(watched.id)) == 1
    assert client.meta.exists(unwatched.keys.outcome(unwatched.id)) == 0
    assert unwatched.result(timeout=1) is None  # done without an outcome: it returned None
    assert client.meta.zcard(watched.keys.waiting) == 0


def wait_for_member(client, job) -> bool:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if client.meta.zscore(job.keys.waiting, job.id) is not None:
            return True
        time.sleep(0.01)
    return False


def test_a_message_back_after_its_done_window_does_not_complete_twice(url):
    """A run stalls past its lease with the message fetched; another consumer takes it over
    and completes it; the first run comes back after the done record was pruned: its
    outcome is not recorded again (only the owner settles), so the group completed it once."""
    from redismq import App, Client

    client = Client(url, done_ttl=1)
    app = App(client)
    runs: list[str] = []

    @app.task(topic="mail", max_retries=0)
    def welcome() -> None:
        runs.append("run")

    client.create_topic("mail", queues=1)
    welcome.send()
    sub = app.subscriptions[("mail", "workers")]
    stalled = client.consumer("mail", "workers", visibility_timeout=0.5, name="stalled")
    other = client.consumer("mail", "workers", visibility_timeout=0.5, name="other")
    fetched = stalled.receive(count=1, block=0.5)
    time.sleep(0.7)  # past the lease
    taken: list = []
    deadline = time.monotonic() + 10
    while not taken and time.monotonic() < deadline:  # taken over at a second look
        taken = other.receive(count=1, block=0.2)
    assert [m.id for m in taken] == [m.id for m in fetched]
    assert BatchRunner(other, sub).run(taken).processed == 1
    time.sleep(1.5)  # past the done window
    welcome.send()  # a later settle prunes the done record of the first message
    run_until_idle(client, app, "mail")
    assert (
        client.router.queue_broker(client.topic("mail"), 0).redis.zcard(
            QueueKeys(client.namespace, "mail", 0).done("workers")
        )
        == 1
    )  # the first message's done record is gone

    counts = BatchRunner(stalled, sub).run(fetched)  # the stalled run comes back
    assert counts.processed == 0 and counts.lost == 1
    stats = client.router.queue_broker(client.topic("mail"), 0).redis.hgetall(
        QueueKeys(client.namespace, "mail", 0).stats("workers")
    )
    assert int(stats[b"done"]) == 2  # one completion each, not three
    client.close()


def test_a_result_of_dates_decimals_and_uuids_comes_back_as_the_same_types(client, app):
    at = datetime(2026, 12, 3, 8, 30, tzinfo=UTC)
    key = UUID("12345678-1234-5678-1234-567812345678")

    @app.task(topic="invoices")
    def total():
        return {"at": at, "day": at.date(), "amount": Decimal("10.10"), "keys": (key,)}

    job = total.send()
    run_until_idle(client, app, "invoices")
    got = job.result(timeout=1)
    assert got == {"at": at, "day": at.date(), "amount": Decimal("10.10"), "keys": [key]}
    assert isinstance(got["amount"], Decimal)


def test_a_result_json_cannot_carry_is_stored_as_its_repr_with_a_warning(client, app, caplog):
    runs = []

    @app.task(topic="sets", max_retries=3)
    def tags():
        runs.append(1)
        return {"tags": {"a"}}

    job = tags.send()
    with caplog.at_level("WARNING", logger="redismq"):
        run_until_idle(client, app, "sets")
    # The task ran and did its work: it is done, not run again, and says what was stored.
    assert runs == [1] and job.status() == "done"
    assert job.result(timeout=1) == {"tags": "{'a'}"}
    [line] = [r.getMessage() for r in caplog.records if job.id in r.getMessage()]
    assert "set" in line and "repr" in line


def test_a_result_that_holds_itself_is_stored_as_its_repr_not_run_again(client, app):
    runs = []

    @app.task(topic="loops", max_retries=3)
    def loop():
        runs.append(1)
        node: dict = {"at": datetime(2026, 12, 3, tzinfo=UTC)}
        node["self"] = node
        return node

    job = loop.send()
    run_until_idle(client, app, "loops")
    assert runs == [1] and job.status() == "done"
    assert "'self': {...}" in job.result(timeout=1)


def test_a_result_with_a_date_keeps_json_keys_as_json_writes_them(client, app, caplog):
    @app.task(topic="keys")
    def counts():
        return {1: "one", False: "no", None: "none", "at": date(2026, 12, 3)}

    job = counts.send()
    with caplog.at_level("WARNING", logger="redismq"):
        run_until_idle(client, app, "keys")
    assert job.result(timeout=1) == {
        "1": "one",
        "false": "no",
        "null": "none",
        "at": date(2026, 12, 3),
    }
    assert not [r for r in caplog.records if job.id in r.getMessage()]


def test_a_waiter_that_gives_up_leaves_the_other_waiters_registered(client, app):
    """Two processes wait for one job; one gives up first. The other is still registered,
    so the job's None is stored for it (it is woken at once, not at its next look)."""
    import threading

    from redismq import JobTimeout

    @app.task(topic="shared")
    def nothing():
        return None

    job = nothing.send()
    other = type(job)(client, job.id, job.topic, job.queue, job.group)
    got = []
    patient = threading.Thread(target=lambda: got.append(other.result(timeout=20)))
    patient.start()
    assert wait_for_member(client, job)
    with pytest.raises(JobTimeout):
        job.result(timeout=0.3)
    assert client.meta.zscore(job.keys.waiting, job.id) is not None
    run_until_idle(client, app, "shared")
    assert client.meta.exists(job.keys.outcome(job.id)) == 1
    patient.join()
    assert got == [None]
