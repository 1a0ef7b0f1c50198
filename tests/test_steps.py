"""Effect-once steps: a side effect inside a task happens once although the task runs again
after a crash between the effect and the acknowledgement."""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter

import pytest

from redismq import App, StepBusy, current_job
from redismq.processing import BatchRunner
from redismq.status import topic_status
from tests.apps import sideeffects
from tests.conftest import wait_for


class Crash(BaseException):
    """Stands for the process dying: nothing after it runs, nothing is acknowledged."""


def drain(client, app, topic: str, vt: float, crash_ok: bool = True) -> None:
    """Run everything queued with fresh consumers; a consumer that 'crashes' is dropped
    and its messages are taken over after the visibility timeout."""
    sub = app.subscriptions[(topic, "workers")]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        consumer = client.consumer(topic, "workers", visibility_timeout=vt, max_retries=5)
        try:
            while True:
                batch = consumer.receive(count=20, block=0.05)
                if not batch and consumer.backlog() == 0:
                    return
                BatchRunner(consumer, sub).run(batch)
        except Crash:
            assert crash_ok
            time.sleep(vt)
    raise AssertionError("messages were left after a minute")


def test_effect_happens_once_although_the_run_dies_after_it_200_times(client):
    app = App(client)
    effects: Counter[int] = Counter()

    @app.task(topic="once", max_retries=5)
    def send_mail(n: int) -> None:
        job = current_job()
        with job.once("smtp-send") as step:
            if step.needed:
                effects[n] += 1
        if job.attempt == 0:
            raise Crash  # dies after the effect, before the acknowledgement

    client.create_topic("once", queues=2)
    for n in range(200):
        send_mail.send(n)
    drain(client, app, "once", vt=0.05)
    assert effects == Counter({n: 1 for n in range(200)})


def test_failed_step_is_released_and_done_by_the_retry(client):
    app = App(client)
    attempts: list[int] = []

    @app.task(topic="once", max_retries=2, backoff=0.01)
    def flaky() -> None:
        with current_job().once("charge") as step:
            assert step.needed
            attempts.append(current_job().attempt)
            if len(attempts) == 1:
                raise RuntimeError("gateway timeout")

    flaky.send()
    drain(client, app, "once", vt=1.0, crash_ok=False)
    assert attempts == [0, 1]


def test_a_step_held_by_another_live_run_is_busy(client):
    client.create_topic("once", queues=1)
    client.send("once", {"n": 1})
    first = client.consumer("once", "g")
    [msg] = first.receive(count=1, block=0.2)
    from redismq.context import JobContext

    with JobContext(msg, None, first).once("effect") as step:
        assert step.needed
        with pytest.raises(StepBusy, match="held by another run"):
            JobContext(msg, None, first).once("effect").__enter__()
    with JobContext(msg, None, first).once("effect") as again:
        assert not again.needed


def test_sigkilled_worker_after_the_effect_does_not_repeat_it(client, url, tmp_path, processes):
    db = tmp_path / "effects.db"
    sideeffects.connect(db).close()
    from tests.apps import steps_app

    steps_app.app.connect(client)
    try:
        jobs = [steps_app.effect.send(n) for n in range(10)]
    finally:
        steps_app.app.connect(None)
    worker = processes.start(
        "worker",
        "tests.apps.steps_app:app",
        "--url",
        url,
        "--processes",
        "2",
        "--concurrency",
        "1",
        "--visibility-timeout",
        "1",
        "--log-level",
        "ERROR",
        env={sideeffects.ENV_DB: str(db)},
    )
    assert wait_for(lambda: all(j.status() == "done" for j in jobs), timeout=120)
    assert sideeffects.runs(db, "effect") == Counter({str(n): 1 for n in range(10)})
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(30) == 0


def test_a_slow_effect_is_marked_done_although_its_claim_expired(client):
    client.create_topic("once", queues=1)
    client.send("once", {"n": 1})
    consumer = client.consumer("once", "g", visibility_timeout=0.2)
    [msg] = consumer.receive(count=1, block=0.2)
    from redismq.context import JobContext

    with JobContext(msg, None, consumer).once("slow") as step:
        assert step.needed
        time.sleep(0.3)  # longer than the claim's lifetime (the visibility timeout)
    with JobContext(msg, None, consumer).once("slow") as again:
        assert not again.needed


def run_all(client, app, topic: str, group: str = "workers") -> None:
    """Run what is queued for `group` (backoffs skipped) until nothing is left."""
    sub = app.subscriptions[(topic, group)]
    consumer = client.consumer(topic, group, visibility_timeout=5)
    deadline = time.monotonic() + 30
    while consumer.backlog() and time.monotonic() < deadline:
        consumer.move_due(until_ms=2**42)
        BatchRunner(consumer, sub).run(consumer.receive(count=20, block=0.05))
    assert consumer.backlog() == 0


def test_a_resend_after_its_dedup_record_was_lost_keeps_the_step_key(client):
    """A message whose send raised NotReplicated can run, then be lost in a failover with
    its dedup record (tests/fault/soak.py met it); sent again with its dedup key, it is
    stored under a new id. The step's key is the first run's, through a retry too, so the
    external side drops the repeat."""
    app = App(client)
    runs: list[tuple[str, int, str]] = []

    @app.task(topic="mail", max_retries=1, backoff=0.01)
    def welcome(user: int) -> None:
        job = current_job()
        with job.once("smtp-send") as step:
            runs.append((job.id, job.attempt, step.key))
        if job.attempt == 0 and len(runs) == 1:
            raise RuntimeError("the SMTP server is down")

    first = welcome.send_with_options([7], dedup_key="user-7")
    run_all(client, app, "mail")
    lost = client.router.queue_keys("mail", first.queue).dedup("user-7")
    broker = client.router.queue_broker(client.router.topic("mail"), first.queue)
    assert broker.redis.delete(lost) == 1  # what the failover took with the message
    again = welcome.send_with_options([7], dedup_key="user-7")
    assert again.id != first.id
    run_all(client, app, "mail")
    assert [(mid, attempt) for mid, attempt, _ in runs] == [
        (first.id, 0),
        (first.id, 1),
        (again.id, 0),
    ]
    assert len({key for _, _, key in runs}) == 1
    other = welcome.send_with_options([8], dedup_key="user-8")
    plain = welcome.send(7)
    run_all(client, app, "mail")
    assert [mid for mid, _, _ in runs[3:]] == [other.id, plain.id]
    assert len({key for _, _, key in runs}) == 3  # another dedup key, or none: another key


def test_replayed_dead_letters_skip_their_done_steps_after_the_done_window(url):
    """The issue's repro: the e-mail is sent inside a step, then the task fails and is
    dead-lettered; the dead letters are replayed after the done window."""
    from redismq import Client

    client = Client(url, done_ttl=1)
    app = App(client)
    sent: Counter[int] = Counter()
    failing = {"yes": True}

    @app.task(topic="mail", max_retries=0)
    def welcome(n: int) -> None:
        with current_job().once("smtp") as step:
            if step.needed:
                sent[n] += 1
        if failing["yes"]:
            raise RuntimeError("the database is down")

    for n in range(5):
        welcome.send(n)
    run_all(client, app, "mail")
    assert sent == Counter(range(5))
    assert len(client.dead_letters("mail", "workers")) == 5

    time.sleep(2.0)  # past the done window (done_ttl=1)
    failing["yes"] = False
    assert client.replay_dead_letters("mail", "workers") == 5
    run_all(client, app, "mail")
    assert sent == Counter(range(5))  # no e-mail sent again
    [row] = topic_status(client, "mail")["groups"]
    assert row["done"] == 5 and row["dead"] == 0
    client.close()


def test_a_done_step_outlives_the_done_window_while_its_message_is_retrying(url):
    from redismq import Client

    client = Client(url, done_ttl=1)
    app = App(client)
    sent: list[int] = []

    @app.task(topic="mail", max_retries=1, backoff=1.5)
    def welcome() -> None:
        with current_job().once("smtp") as step:
            if step.needed:
                sent.append(current_job().attempt)
        if current_job().attempt == 0:
            raise RuntimeError("fails once, after the e-mail")

    welcome.send()
    sub = app.subscriptions[("mail", "workers")]
    consumer = client.consumer("mail", "workers")
    BatchRunner(consumer, sub).run(consumer.receive(count=1, block=0.5))
    time.sleep(2.0)  # the retry waits longer than the done window
    run_all(client, app, "mail")
    assert sent == [0]
    client.close()


def test_step_marks_of_a_finished_message_expire_with_its_done_record(url):
    from redismq import Client

    client = Client(url, done_ttl=60)
    app = App(client)

    @app.task(topic="mail", max_retries=0)
    def welcome(fail: bool) -> None:
        with current_job().once("smtp"):
            pass
        if fail:
            raise RuntimeError("dead")

    client.create_topic("mail", queues=1)
    done, dead = welcome.send(False), welcome.send(True)
    run_all(client, app, "mail")
    r = client.router.queue_broker(client.topic("mail"), 0).redis
    keys = client.router.queue_keys("mail", 0)
    assert 0 < r.pttl(keys.steps("workers", done.id)) <= 60_000  # kept for the done window
    assert r.pttl(keys.steps("workers", dead.id)) == -1  # kept while it is a dead letter
    assert client.purge_dead_letters("mail", "workers") == 1
    assert 0 < r.pttl(keys.steps("workers", dead.id)) <= 60_000
    client.close()


def test_a_claim_lives_as_long_as_the_lease_and_is_renewed_with_it(client):
    from redismq.context import JobContext

    client.create_topic("once", queues=1)
    client.send("once", {"n": 1})
    holder = client.consumer("once", "g", visibility_timeout=1.0)
    [msg] = holder.receive(count=1, block=0.5)
    with JobContext(msg, None, holder).once("charge") as step:
        assert step.needed
        for _ in range(8):  # 2.4 s, longer than the claim's own 1 s
            time.sleep(0.3)
            assert holder.renew([msg]) == []
        with pytest.raises(StepBusy):  # the first claim is still held
            JobContext(msg, None, holder).once("charge").__enter__()
    assert not step.lost


def test_a_paused_run_is_fenced_off_by_the_run_that_took_its_message_over(client):
    """A claims a step, then stalls past its lease; B takes the message over. B's claim is
    busy until A's claim lapses, A learns it lost the message at its next claim or done
    mark, and both runs see the same step.key to hand to the external system."""
    from redismq import StepLost
    from redismq.context import JobContext

    client.create_topic("once", queues=1)
    client.send("once", {"n": 1})
    a = client.consumer("once", "g", visibility_timeout=2.0)
    # B takes expired leases (0.3 s) after a second look (0.6 s later), while A's step claim
    # (as long as A's lease: 2 s) still holds: B's takeover may come a second late.
    b = client.consumer("once", "g", visibility_timeout=0.3)
    [msg_a] = a.receive(count=1, block=0.5)
    time.sleep(0.5)
    step_a = JobContext(msg_a, None, a).once("charge").__enter__()  # claimed 0.5 s late
    assert step_a.needed
    taken: list = []
    assert wait_for(lambda: taken.extend(b.receive(count=1, block=0.1)) or taken, timeout=5)
    [msg_b] = taken  # A's lease expired: B took the message over
    assert msg_b.id == msg_a.id

    with pytest.raises(StepBusy) as busy:  # A's claim has not lapsed yet
        JobContext(msg_b, None, b).once("charge").__enter__()
    assert 0 < busy.value.retry_after <= 2.0
    assert not isinstance(busy.value, StepLost)
    time.sleep(busy.value.retry_after + 0.05)
    with JobContext(msg_b, None, b).once("charge") as step_b:
        assert step_b.needed

    assert step_b.key == step_a.key  # the external side sees one key for both runs
    with pytest.raises(StepLost):  # A resumes: its next claim is refused
        JobContext(msg_a, None, a).once("refund").__enter__()
    step_a.__exit__(None, None, None)  # A's done mark after the takeover
    assert step_a.lost and not step_b.lost


def test_a_run_that_lost_its_message_stops_at_its_next_step_and_settles_nothing(client):
    app = App(client)
    runs: list[str] = []
    taken_over = threading.Event()

    @app.task(topic="once", max_retries=3)
    def charge() -> None:
        runs.append(current_job().consumer.name)
        # stalls past its lease until another consumer took the message over
        assert taken_over.wait(30)
        with current_job().once("charge") as step:
            assert step.needed

    client.create_topic("once", queues=1)
    charge.send()
    sub = app.subscriptions[("once", "workers")]
    a = client.consumer("once", "workers", visibility_timeout=1.0, name="a")
    b = client.consumer("once", "workers", visibility_timeout=1.0, name="b")
    batch = a.receive(count=1, block=0.5)
    t = threading.Thread(target=BatchRunner(a, sub).run, args=(batch,))
    t.start()
    taken: list = []
    assert wait_for(lambda: taken.extend(b.receive(count=1, block=0.1)) or taken, timeout=10)
    taken_over.set()
    t.join()
    counts_b = BatchRunner(b, sub).run(taken)  # B's run: not disturbed by A's
    assert counts_b.processed == 1 and counts_b.failed == 0
    [row] = topic_status(client, "once")["groups"]
    assert (row["done"], row["retried"], row["dead"], row["pending"]) == (1, 0, 0, 0)
    assert runs == ["a", "b"]


def test_a_worker_renews_the_claim_of_a_step_longer_than_the_visibility_timeout(
    client, url, tmp_path, processes
):
    db = tmp_path / "effects.db"
    sideeffects.connect(db).close()
    from tests.apps import steps_app

    client.create_topic("slow-steps", queues=1)
    steps_app.app.connect(client)
    try:
        job = steps_app.slow.send(4.0)
    finally:
        steps_app.app.connect(None)
    worker = processes.start(
        "worker",
        "tests.apps.steps_app:app",
        "--url",
        url,
        "--processes",
        "1",
        "--topic",
        "slow-steps",
        "--visibility-timeout",
        "1",
        "--log-level",
        "ERROR",
        env={sideeffects.ENV_DB: str(db)},
    )
    r = client.router.queue_broker(client.topic("slow-steps"), 0).redis
    key = client.router.queue_keys("slow-steps", 0).steps("workers", job.id)
    assert wait_for(lambda: r.hget(key, "slow"), timeout=30)
    first = int(r.hget(key, "slow").split(b"|")[0])
    time.sleep(2.0)  # twice the claim's own lifetime
    claim = r.hget(key, "slow")
    server_ms = int(r.time()[0] * 1000 + r.time()[1] // 1000)
    assert (
        claim != b"done"
        and first < int(claim.split(b"|")[0])
        and int(claim.split(b"|")[0]) > server_ms
    )
    assert wait_for(lambda: job.status() == "done", timeout=30)
    assert r.hget(key, "slow") == b"done"
    assert sideeffects.runs(db, "slow") == Counter({"0": 1})
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(30) == 0
