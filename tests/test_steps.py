"""Effect-once steps: a side effect inside a task happens once although the task runs again
after a crash between the effect and the acknowledgement."""

from __future__ import annotations

import signal
import time
from collections import Counter

import pytest

from redismq import App, StepBusy, current_job
from redismq.processing import BatchRunner
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
