"""Issue 14, item 2: a job found by its id alone (`client.job`, `app.job`,
`AsyncClient.job`, `redismq job show ID`), and `status()` saying `running` and `retrying`
whatever way the job was sent. Real servers."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import pytest
from click.testing import CliRunner
from sentinels import Servers

from redismq import AsyncClient, Client, JobFailed, JobNotFound, current_job
from redismq.brokers import add_broker
from redismq.cli.main import main
from redismq.processing import BatchRunner
from redismq.testing import run_until_idle


def test_a_fresh_client_finds_the_job_by_its_id_alone(client, app, url):
    @app.task(topic="reports")
    def build(n):
        current_job().set_progress(0.5, "half way")
        return n * 10

    sent = build.send(4)
    web = Client(url)  # another process would hold only the id
    job = web.job(sent.id)
    assert (job.topic, job.queue, job.group) == ("reports", sent.queue, "workers")
    assert job.status() == "queued"
    run_until_idle(app)
    assert job.status() == "done"
    assert job.result(timeout=1) == 40
    assert job.progress() == (0.5, "half way")
    assert app.job(sent.id).result(timeout=1) == 40
    web.close()


@pytest.mark.parametrize(
    "how", ["plain", "dedup_key", "delay", "bounded"], ids=lambda h: f"sent-with-{h}"
)
def test_status_is_running_while_the_job_runs(client, app, url, how):
    if how == "bounded":
        client.create_topic("reports", queues=2, max_backlog=100)
    seen = []
    web = Client(url)

    @app.task(topic="reports")
    def build():
        seen.append(web.job(current_job().id).status())

    options = {"dedup_key": {"dedup_key": "r-1"}, "delay": {"delay": 0.01}}.get(how, {})
    job = build.send_with_options(**options)
    assert job.status() == "queued"
    run_until_idle(app)
    assert seen == ["running"]
    assert job.status() == "done"
    web.close()


def test_status_is_retrying_between_attempts_and_shows_the_error(client, app):
    @app.task(topic="reports", max_retries=3, backoff=3600)
    def build():
        raise ConnectionError("db down")

    sent = build.send()
    consumer = client.consumer("reports", "workers")
    batch = consumer.receive(count=1, block=1)
    BatchRunner(consumer, app.subscriptions[("reports", "workers")]).run(batch)
    job = client.job(sent.id)
    assert job.status() == "retrying"
    record = job.describe()
    assert record["attempts"] == 1 and record["error"]["message"] == "db down"
    assert record["retry_at"] > record["sent_at"]


def test_cancel_by_id_stops_a_queued_job(client, app, url):
    runs = []

    @app.task(topic="reports")
    def build():
        runs.append(1)

    sent = build.send()
    assert Client(url).job(sent.id).cancel() is True
    run_until_idle(app)
    assert runs == [] and client.job(sent.id).status() == "cancelled"


def test_an_unknown_id_is_one_clear_error(client):
    with pytest.raises(JobNotFound, match="no job with the id 'nope'"):
        client.job("nope")


def test_async_client_job_has_an_awaitable_result(client, app, url):
    @app.task(topic="reports")
    def build(n):
        return {"n": n}

    sent = build.send(5)

    async def wait() -> tuple[str, str, object]:
        async with AsyncClient(url) as aclient:
            job = await aclient.job(sent.id)
            before = await job.status()
            waiting = asyncio.ensure_future(job.result(timeout=10))
            await asyncio.sleep(0.1)
            await asyncio.to_thread(run_until_idle, app)
            return before, await job.status(), await waiting

    assert asyncio.run(wait()) == ("queued", "done", {"n": 5})


def test_async_job_result_raises_job_failed_with_the_traceback(client, app, url):
    @app.task(topic="reports", max_retries=0)
    def build():
        raise ValueError("broken report")

    sent = build.send()
    run_until_idle(app)

    async def wait() -> JobFailed:
        async with AsyncClient(url) as aclient:
            job = await aclient.job(sent.id)
            with pytest.raises(JobFailed) as caught:
                await job.result(timeout=5)
            assert await job.status() == "dead"
            return caught.value

    failed = asyncio.run(wait())
    assert "in build" in failed.traceback


def test_job_show_prints_status_attempts_timings_error_and_traceback(client, app, url):
    @app.task(topic="reports", max_retries=1)
    def build():
        current_job().set_progress(0.25, "loading")
        raise ValueError("broken report")

    sent = build.send()
    run_until_idle(app)
    result = CliRunner().invoke(main, ["job", "show", sent.id, "--url", url])
    assert result.exit_code == 0, result.output
    out = result.output
    for expected in (
        "dead",
        "attempts",
        "2",
        "25%",
        "loading",
        "sent",
        "started",
        "ValueError: broken report",
        "in build",
    ):
        assert expected in out, (expected, out)
    as_json = CliRunner().invoke(main, ["job", "show", sent.id, "--json", "--url", url])
    record = json.loads(as_json.output)
    assert record["status"] == "dead" and record["attempts"] == 2
    assert record["finished_at"] is not None  # when it was dead-lettered
    assert record["finished_at"] >= record["sent_at"]
    assert "in build" in record["traceback"]


def test_job_show_of_an_unknown_id_is_one_error_line(url):
    result = CliRunner().invoke(main, ["job", "show", "0123", "--url", url])
    assert result.exit_code == 1
    assert result.output.startswith("error: no job with the id '0123'")


def test_job_cancel_by_id_from_the_command_line(client, app, url):
    runs = []

    @app.task(topic="reports")
    def build(n):
        runs.append(n)

    stuck, done = build.send(1), build.send(2)
    client.consumer("reports", "workers")  # the group exists, nothing received yet
    cancelled = CliRunner().invoke(main, ["job", "cancel", stuck.id, "--url", url])
    assert cancelled.exit_code == 0, cancelled.output
    assert cancelled.output.strip() == f"job {stuck.id}: cancelled"
    run_until_idle(app)
    assert runs == [2] and stuck.status() == "cancelled"
    again = CliRunner().invoke(main, ["job", "cancel", stuck.id, "--url", url])
    assert (again.exit_code, again.output.strip()) == (0, f"job {stuck.id}: cancelled already")
    late = CliRunner().invoke(main, ["job", "cancel", done.id, "--url", url])
    assert late.exit_code == 1
    assert late.output.strip() == f"job {done.id}: not cancelled, it had finished (done)"
    unknown = CliRunner().invoke(main, ["job", "cancel", "0123", "--url", url])
    assert unknown.exit_code == 1 and unknown.output.startswith("error: no job with the id")


@pytest.fixture
def two_brokers(client: Client) -> Iterator[Servers]:
    servers = Servers()
    for name in ("b0", "b1"):
        add_broker(client, name, servers.start().url)
    yield servers
    servers.stop_all()


def test_job_on_another_broker_than_the_meta_is_found(client, app, url, two_brokers):
    client.create_topic("reports", queues=4)

    @app.task(topic="reports")
    def build(n):
        return n

    sent = [build.send(i) for i in range(4)]
    brokers = {client.topic("reports").placement[j.queue] for j in sent}
    assert brokers == {"b0", "b1"}
    run_until_idle(app)
    web = Client(url)
    assert [web.job(j.id).result(timeout=5) for j in sent] == [0, 1, 2, 3]
    web.close()


def test_async_job_progress_and_cancel_by_id(client, app, url):
    runs = []

    @app.task(topic="reports")
    def build():
        runs.append(1)

    sent = build.send()
    client.consumer("reports", "workers")  # the group exists, nothing received yet

    async def cancel() -> tuple[object, bool, bool, str]:
        async with AsyncClient(url) as aclient:
            job = await aclient.job(sent.id)
            progress = await job.progress()
            first, again = await job.cancel(), await job.cancel()
            return progress, first, again, await job.status()

    assert asyncio.run(cancel()) == (None, True, False, "cancelled")
    run_until_idle(app)
    assert runs == []


def test_a_job_handed_back_unstarted_reads_queued_again(client, app):
    @app.task(topic="reports")
    def build(n):
        return n

    client.create_topic("reports", queues=1)
    jobs = [build.send(i) for i in range(3)]
    consumer = client.consumer("reports", "workers")
    batch = consumer.receive(count=3, block=1)
    runner = BatchRunner(consumer, app.subscriptions[("reports", "workers")])
    ran = []
    runner.run(batch, stop=lambda: bool(ran) or bool(ran.append(1)))  # stops after the first
    assert [j.status() for j in jobs] == ["done", "queued", "queued"]


def test_async_job_describe_is_the_sync_record(client, app, url):
    @app.task(topic="reports", max_retries=0)
    def build(n):
        if n:
            raise ValueError("broken report")
        return {"rows": 3}

    sent = [build.send(0), build.send(1)]
    run_until_idle(app)

    async def describe() -> list[dict]:
        async with AsyncClient(url) as aclient:
            return [await (await aclient.job(job.id)).describe() for job in sent]

    records = asyncio.run(describe())
    assert records == [job.describe() for job in sent]
    assert [r["status"] for r in records] == ["done", "dead"]
    assert records[0]["result"] == {"rows": 3}
    assert records[1]["error"] == {"type": "ValueError", "message": "broken report"}
