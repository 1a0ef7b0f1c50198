"""How long a job's records last (result_ttl): a result read after it expired, a dead job's
handle after its records went, and a delayed job's index and cancel mark, which last until
it is due and then result_ttl more. Real server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from redismq import App, AsyncClient, Client, JobFailed, JobNotFound, ResultExpired
from redismq.job import AsyncJob
from redismq.keys import job_index
from redismq.testing import run_until_idle


@pytest.fixture
def short(url: str) -> Iterator[Client]:
    """A client whose jobs' results and records last one second (done records a minute)."""
    client = Client(url, result_ttl=1.0, done_ttl=60.0)
    try:
        yield client
    finally:
        client.close()


def test_a_result_read_after_it_expired_is_an_error_not_none(short, url):
    app = App(short)

    @app.task(topic="answers")
    def answer():
        return 42

    job = answer.send()
    run_until_idle(app)
    assert job.result(timeout=1) == 42
    time.sleep(1.3)
    assert job.status() == "done"  # the done record lasts done_ttl
    with pytest.raises(ResultExpired, match=f"result of job '{job.id}' expired"):
        job.result(timeout=1)

    async def read() -> None:
        async with AsyncClient(url, result_ttl=1.0) as aclient:
            handle = AsyncJob(aclient, job.id, job.topic, job.queue, job.group, "answer")
            with pytest.raises(ResultExpired):
                await handle.result(timeout=1)

    asyncio.run(read())


def test_a_none_result_within_result_ttl_is_none(short):
    app = App(short)

    @app.task(topic="quiet")
    def nothing():
        return None

    job = nothing.send()
    run_until_idle(app)
    assert job.result(timeout=1) is None


def test_a_dead_job_whose_records_expired_is_not_found_rather_than_waited_for(short):
    app = App(short)

    @app.task(topic="broken", max_retries=0)
    def broken():
        raise ValueError("no")

    job = broken.send()
    run_until_idle(app)
    with pytest.raises(JobFailed):
        job.result(timeout=1)
    time.sleep(1.3)
    started = time.monotonic()
    with pytest.raises(JobNotFound, match=job.id):
        job.result(timeout=5)
    assert time.monotonic() - started < 4  # told at once, not after the timeout


def test_a_job_delayed_past_result_ttl_is_found_by_id_until_it_is_due(short):
    app = App(short)

    @app.task(topic="later")
    def later():
        return "ran"

    job = later.send_with_options(delay=60)
    time.sleep(1.3)
    found = short.job(job.id)
    assert (found.topic, found.queue, found.status()) == (job.topic, job.queue, "queued")
    assert 58_000 < short.meta.pttl(job_index("rmq", job.id)) <= 61_000


def test_a_cancelled_delayed_job_stays_cancelled_past_the_mark_ttl(url):
    client = Client(url, result_ttl=1.0, done_ttl=1.0)
    try:
        app = App(client)
        client.create_topic("later", queues=1)  # both jobs' cancel marks in one set
        runs = []

        @app.task(topic="later")
        def later(n):
            runs.append(n)

        job = later.send_with_options(args=[1], delay=3600)
        assert job.cancel()
        time.sleep(1.3)
        assert later.send_with_options(args=[2], delay=3600).cancel()  # prunes expired marks
        later.send(3)
        run_until_idle(app, skip_delays=True)
        assert runs == [3]
        assert job.status() == "cancelled"
    finally:
        client.close()
