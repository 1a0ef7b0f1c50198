"""Issue 14, item 4: `retry_for`, `dont_retry_for` and `raise redismq.Retry(delay=...)`, on a
real server."""

from __future__ import annotations

import time

import pytest

from redismq import JobFailed, Retry, current_job
from redismq.errors import RedisMQError
from redismq.testing import run_until_idle


def test_dont_retry_for_dead_letters_at_once_with_the_traceback(client, app):
    runs = []

    @app.task(topic="pay", max_retries=5, dont_retry_for=(KeyError,))
    def charge(order):
        runs.append(order)
        raise KeyError(order)

    job = charge.send("o-1")
    counts = run_until_idle(app)
    assert runs == ["o-1"] and (counts.retried, counts.dead) == (0, 1)
    [dead] = client.dead_letters("pay", "workers")
    assert dead.attempts == 1 and "in charge" in dead.traceback
    with pytest.raises(JobFailed, match="KeyError"):
        job.result(timeout=1)


def test_retry_for_retries_only_those_exceptions(app):
    runs = []

    @app.task(topic="pay", max_retries=2, retry_for=(ConnectionError,))
    def charge(kind):
        runs.append(kind)
        raise (ConnectionError if kind == "net" else ValueError)(kind)

    charge.send("net")
    charge.send("bug")
    counts = run_until_idle(app)
    assert runs.count("net") == 3  # retried twice, then dead
    assert runs.count("bug") == 1  # not a ConnectionError: dead at once
    assert counts.dead == 2


def test_dont_retry_for_wins_over_retry_for(app):
    runs = []

    @app.task(topic="pay", max_retries=3, retry_for=(OSError,), dont_retry_for=(FileNotFoundError,))
    def charge():
        runs.append(1)
        raise FileNotFoundError("gone")

    charge.send()
    assert run_until_idle(app).dead == 1 and len(runs) == 1


def test_raise_retry_waits_its_delay_not_the_backoff_and_counts_as_an_attempt(app):
    started = []

    @app.task(topic="pay", max_retries=2, backoff=3600)
    def poll():
        started.append(time.monotonic())
        raise Retry(delay=0.3)

    job = poll.send()
    counts = run_until_idle(app, skip_delays=False, timeout=20)
    assert len(started) == 3  # max_retries respected: 1 + 2 attempts, then dead
    gaps = [b - a for a, b in zip(started, started[1:], strict=False)]
    assert all(0.3 <= gap < 1.0 for gap in gaps), gaps  # its delay, not several times it
    assert (counts.retried, counts.dead) == (2, 1)
    with pytest.raises(JobFailed, match="Retry"):
        job.result(timeout=1)


def test_retry_then_success(app):
    attempts = []

    @app.task(topic="pay", max_retries=3)
    def poll():
        attempts.append(current_job().attempt)
        if len(attempts) < 2:
            raise Retry(delay=0.05)
        return "ok"

    job = poll.send()
    run_until_idle(app)
    assert attempts == [0, 1] and job.result(timeout=1) == "ok"


def test_retry_rejects_a_bad_delay():
    with pytest.raises(RedisMQError, match="delay"):
        Retry(delay=-1)
    with pytest.raises(RedisMQError, match="exception types"):
        from redismq import App

        App("redis://127.0.0.1:1/0").task(retry_for=("ValueError",))(lambda: None)
