"""Issue 14, item 1: a failing task's traceback, in the worker's log line, with the job and
the dead letter (trimmed), in `JobFailed` and re-raised by `run_until_idle`. Real server."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from redismq import JobFailed
from redismq.cli.main import main
from redismq.failures import TRACEBACK_LIMIT
from redismq.testing import run_until_idle


def nested_failure(n: int) -> None:
    raise ValueError(f"bad record {n}")


def test_dead_job_carries_its_traceback_in_job_failed_and_dead_letter(client, app):
    @app.task(topic="imports", max_retries=1, backoff=0.01)
    def load(n):
        nested_failure(n)

    job = load.send(7)
    run_until_idle(app)
    with pytest.raises(JobFailed) as caught:
        job.result(timeout=5)
    tb = caught.value.traceback
    assert "Traceback (most recent call last)" in tb
    assert "in nested_failure" in tb and "in load" in tb  # the task's own frames
    assert tb.rstrip().endswith("ValueError: bad record 7")
    assert str(caught.value).endswith(tb)
    assert str(caught.value).startswith(f"job {job.id} dead: ValueError: bad record 7")
    [dead] = client.dead_letters("imports", "workers")
    assert "in nested_failure" in dead.traceback
    assert json.loads(job.info()["error"])["traceback"] == tb


def test_retrying_job_stores_the_traceback_of_its_last_failure(client, app):
    @app.task(topic="imports", max_retries=5, backoff=3600)
    def load(n):
        nested_failure(n)

    job = load.send(3)
    consumer = client.consumer("imports", "workers")
    from redismq.processing import BatchRunner, Counts

    BatchRunner(consumer, app.subscriptions[("imports", "workers")]).run_one(
        consumer.receive(count=1, block=1)[0], Counts()
    )
    error = json.loads(job.info()["error"])
    assert error["type"] == "ValueError" and "in nested_failure" in error["traceback"]


def test_stored_traceback_is_trimmed_to_the_bound_keeping_both_ends(client, app):
    @app.task(topic="imports", max_retries=0)
    def huge():
        raise RuntimeError("x" * 50_000)

    job = huge.send()
    run_until_idle(app)
    with pytest.raises(JobFailed) as caught:
        job.result(timeout=5)
    tb = caught.value.traceback
    assert len(tb.encode()) <= TRACEBACK_LIMIT
    assert tb.startswith("Traceback (most recent call last)")
    assert "in huge" in tb and "bytes cut" in tb
    [dead] = client.dead_letters("imports", "workers")
    assert len(dead.traceback.encode()) <= TRACEBACK_LIMIT


def test_run_until_idle_raise_on_error_reraises_the_first_failure(app):
    @app.task(topic="imports", max_retries=3)
    def load(n):
        nested_failure(n)

    load.send(1)
    with pytest.raises(ValueError, match="bad record 1") as caught:
        run_until_idle(app, raise_on_error=True)
    frames = [f.name for f in __import__("traceback").extract_tb(caught.value.__traceback__)]
    assert "nested_failure" in frames


def test_run_until_idle_without_raise_on_error_keeps_going(app):
    @app.task(topic="imports", max_retries=0)
    def load(n):
        nested_failure(n)

    load.send(1)
    assert run_until_idle(app).dead == 1


def test_dlq_show_prints_the_traceback(client, app, url):
    @app.task(topic="imports", max_retries=0)
    def load(n):
        nested_failure(n)

    job = load.send(9)
    run_until_idle(app)
    result = CliRunner().invoke(
        main, ["dlq", "show", "imports", "--group", "workers", "--id", job.id, "--url", url]
    )
    assert result.exit_code == 0, result.output
    assert "in nested_failure" in result.output
    assert "ValueError: bad record 9" in result.output


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_worker_log_line_of_retry_and_dead_has_the_traceback(client, url, processes, fmt):
    client.create_topic("orders", queues=1)
    client.send("orders", {"task": "orders.import", "args": ["x1"], "kwargs": {}})
    proc = processes.start(
        "worker",
        "tests.apps.firsthour_app:app",
        "--url",
        url,
        "--processes",
        "1",
        "--burst",
        "--log-format",
        fmt,
    )
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, output
    if fmt == "json":
        records = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
        failures = [r for r in records if r.get("outcome") in ("retry", "dead")]
        assert [r["outcome"] for r in failures] == ["retry", "dead"]
        for r in failures:
            assert "in parse_order" in r["exception"]
            assert "ValueError: invalid literal for int()" in r["exception"]
    else:
        for outcome in ("retry", "dead"):
            line = output.index(f"outcome={outcome}")
            rest = output[line:]
            assert "Traceback (most recent call last)" in rest.split("outcome=")[1]
            assert "in parse_order" in rest.split("outcome=")[1]


def test_a_sync_job_past_its_time_limit_shows_where_it_was_stuck(client, url, processes):
    client.create_topic("stuck", queues=1)
    mid = client.send("stuck", {"task": "stuck.wait", "args": [60], "kwargs": {}})
    processes.start(
        "worker", "tests.apps.firsthour_app:app", "--url", url, "--processes", "1",
        "--topic", "stuck", "--grace", "1", "--log-level", "ERROR",
    )  # fmt: skip
    from conftest import wait_for

    assert wait_for(lambda: client.dead_letters("stuck", "workers"), timeout=60)
    [dead] = client.dead_letters("stuck", "workers")
    assert dead.id == mid and "TimeLimitExceeded" in dead.reason
    assert "in stuck_here" in dead.traceback and "time.sleep(seconds)" in dead.traceback


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_traceback_starts_at_the_task_not_in_redismq(app, kind):
    """What a user reads starts where their code does: redismq's own frames that called
    the task (its runner, its handler call) are left out, as the task's are kept."""
    if kind == "sync":

        @app.task(topic="imports", max_retries=0, name="load")
        def load(n):
            nested_failure(n)

    else:

        @app.task(topic="imports", max_retries=0, name="load")
        async def load(n):
            nested_failure(n)

    job = load.send(5)
    run_until_idle(app)
    with pytest.raises(JobFailed) as caught:
        job.result(timeout=5)
    frames = [line for line in caught.value.traceback.splitlines() if line.startswith("  File")]
    assert "in load" in frames[0] and "in nested_failure" in frames[1], frames
    assert not [f for f in frames if "/redismq/" in f or "/workers/" in f], frames


def test_an_error_raised_in_redismq_alone_keeps_its_frames():
    """Where every frame is redismq's (a job it gave up on), nothing is left out."""
    from redismq.failures import task_frames

    ours: dict = {"__name__": "redismq.somewhere"}
    code = "def give_up():\n    raise RuntimeError('time limit')\n"
    code += "try:\n    give_up()\nexcept RuntimeError as exc:\n    caught = exc\n"
    exec(code, ours)  # caught in a frame of redismq's, raised in another
    caught = ours["caught"]
    kept = task_frames(caught).__traceback__
    assert kept is not None and kept.tb_frame.f_globals["__name__"] == "redismq.somewhere"
