"""How long a job's records last (result_ttl): a result read after it expired, a job
waiting longer than its index lasts, and a delayed job's index and cancel mark, which last
until it is due and then result_ttl more. Real server."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import pytest

from redismq import App, AsyncClient, Client, JobNotFound, ResultExpired
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


def test_a_result_read_after_it_expired_is_an_error_not_none(url):
    client = Client(url, result_ttl=2.0, done_ttl=60.0)  # 2 s: read once before it expires
    try:
        app = App(client)

        @app.task(topic="answers")
        def answer():
            return 42

        job = answer.send()
        run_until_idle(app)
        assert job.result(timeout=1) == 42
        time.sleep(2.3)
        assert job.status() == "done"  # the done record lasts done_ttl
        with pytest.raises(ResultExpired, match=f"result of job '{job.id}' expired"):
            job.result(timeout=1)

        async def read() -> None:
            async with AsyncClient(url, result_ttl=2.0) as aclient:
                handle = AsyncJob(aclient, job.id, job.topic, job.queue, job.group, "answer")
                with pytest.raises(ResultExpired):
                    await handle.result(timeout=1)

        asyncio.run(read())
    finally:
        client.close()


def test_a_none_result_within_result_ttl_is_none(short):
    app = App(short)

    @app.task(topic="quiet")
    def nothing():
        return None

    job = nothing.send()
    run_until_idle(app)
    assert job.result(timeout=1) is None


def test_a_job_queued_past_result_ttl_is_still_waited_for(short):
    """Its id index expired, nothing ran it yet: result() waits for it, it does not take
    the missing index for expired records."""
    app = App(short)

    @app.task(topic="backlog")
    def late():
        return "ran"

    job = late.send()
    time.sleep(1.3)
    with pytest.raises(JobNotFound):
        short.job(job.id)
    got = []
    waiter = threading.Thread(target=lambda: got.append(job.result(timeout=10)))
    waiter.start()
    run_until_idle(app)
    waiter.join()
    assert got == ["ran"]


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
