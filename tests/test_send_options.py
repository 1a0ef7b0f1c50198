"""Issue 14, item 5: `send_with_options(..., eta=, topic=, time_limit=, durability=)`, on a
real server."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import pytest

from redismq import App, Client, InvalidMessage, JobFailed, NotReplicated
from redismq.testing import run_until_idle


def delayed_score(client: Client, topic: str) -> float:
    t = client.topic(topic)
    scores = [
        s
        for q in range(t.queues)
        for _, s in client.meta.zrange(
            client.router.queue_keys(topic, q).delayed, 0, -1, withscores=True
        )
    ]
    [score] = scores
    return score


def test_eta_runs_at_that_moment_never_before(app):
    started = []

    @app.task(topic="mail")
    def remind():
        started.append(time.time())

    eta = datetime.now(UTC) + timedelta(seconds=0.6)
    remind.send_with_options(eta=eta)
    run_until_idle(app, skip_delays=False, timeout=20)
    assert len(started) == 1 and started[0] >= eta.timestamp()


def test_a_naive_eta_means_utc(client, app):
    @app.task(topic="mail")
    def remind(): ...

    naive = datetime.now(UTC).replace(tzinfo=None) + timedelta(hours=1)
    remind.send_with_options(eta=naive)
    expected_ms = naive.replace(tzinfo=UTC).timestamp() * 1000
    assert expected_ms <= delayed_score(client, "mail") < expected_ms + 2000


def test_an_eta_in_the_past_runs_now_and_delay_with_eta_is_refused(client, app):
    runs = []

    @app.task(topic="mail")
    def remind():
        runs.append(1)

    remind.send_with_options(eta=datetime.now(UTC) - timedelta(days=1))
    run_until_idle(app, skip_delays=False, timeout=10)
    assert runs == [1]
    with pytest.raises(InvalidMessage, match="a delay or an eta"):
        remind.send_with_options(eta=datetime.now(UTC), delay=5)
    with pytest.raises(InvalidMessage, match="eta must be a datetime"):
        remind.send_with_options(eta=12.5)


def test_topic_sends_to_another_topic_that_a_subscription_of_the_app_runs(client, app):
    runs = []

    @app.task(topic="reports")
    def build(n):
        runs.append(("build", n))
        return n

    @app.task(topic="reports-urgent")
    def other(): ...

    job = build.send_with_options(args=(3,), topic="reports-urgent")
    assert job.topic == "reports-urgent"
    run_until_idle(app, topics=["reports-urgent"])
    assert runs == [("build", 3)] and job.result(timeout=1) == 3
    assert client.job(job.id).topic == "reports-urgent"


def test_topic_no_worker_of_the_app_consumes_is_refused(app):
    @app.task(topic="reports")
    def build(): ...

    with pytest.raises(InvalidMessage, match="no task of the app on topic 'nowhere'"):
        build.send_with_options(topic="nowhere")


def test_time_limit_per_send_overrides_the_task(app):
    @app.task(topic="slow", max_retries=0, time_limit=60)
    async def crunch(seconds):
        await asyncio.sleep(seconds)
        return "done"

    quick = crunch.send_with_options(args=(0.01,))
    cut = crunch.send_with_options(args=(5,), time_limit=0.2)
    run_until_idle(app, timeout=30)
    assert quick.result(timeout=1) == "done"
    with pytest.raises(JobFailed, match="time limit of 0.2s"):
        cut.result(timeout=1)
    with pytest.raises(InvalidMessage, match="time_limit"):
        crunch.send_with_options(time_limit=-1)


def test_durability_per_send_waits_for_a_replica(url):
    app = App(Client(url, replica_timeout=0.1))

    @app.task(topic="ledger")
    def post(): ...

    post.send_with_options(durability="master")
    with pytest.raises(NotReplicated):  # the test server has no replica
        post.send_with_options(durability="replicated")
    with pytest.raises(InvalidMessage, match="durability"):
        post.send_with_options(durability="everywhere")


def test_a_producer_without_the_tasks_code_sends_it_by_name(client, url):
    """A web app that does not import the workers' code (Celery's send_task): it names the
    task, its topic and group; the job is found by id and waited for as any other."""
    workers = App(client)

    @workers.task(topic="reports", name="reports.build")
    def build(n, *, title="r"):
        return f"{title}{n}"

    web = App(Client(url))
    job = web.send_task("reports.build", args=[3], kwargs={"title": "q"}, topic="reports")
    later = web.send_task("reports.build", args=[4], topic="reports", delay=30)
    assert (job.task, job.topic, job.group) == ("reports.build", "reports", "workers")
    assert web.job(job.id).status() == "queued" and later.status() == "queued"
    run_until_idle(workers)
    assert job.result(timeout=5) == "q3" and later.result(timeout=5) == "r4"
    with pytest.raises(InvalidMessage, match="not both"):
        web.send_task("reports.build", topic="reports", delay=1, eta=datetime.now(UTC))
    web.client.close()


def test_send_task_from_async_code(client):
    workers = App(client)

    @workers.task(topic="reports", name="reports.total")
    def total(*numbers):
        return sum(numbers)

    async def send() -> tuple[str, object]:
        web = App(client)
        job = await web.send_task_async("reports.total", args=[1, 2, 3], topic="reports")
        await asyncio.to_thread(run_until_idle, workers)
        result = await job.result(timeout=5)
        await web.async_client.aclose()
        return job.id, result

    job_id, result = asyncio.run(send())
    assert result == 6 and client.job(job_id).status() == "done"
