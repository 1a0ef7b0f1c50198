"""`Task.send_many` and `send_many_async`: many runs of a task in one pipeline per broker,
each a job found by its id and waited for, as `send` gives; on a real server."""

from __future__ import annotations

import asyncio
import json

import pytest

from redismq import App, Client, InvalidMessage, TopicFull
from redismq.keys import job_index
from redismq.testing import run_until_idle


def stored(app: App, topic: str) -> int:
    t = app.client.topic(topic)
    return sum(
        app.client.meta.xlen(app.client.router.queue_keys(topic, q).stream) for q in range(t.queues)
    )


def test_each_run_is_a_job_found_by_its_id_and_waited_for(app):
    @app.task(topic="calc")
    def add(n, *, extra=0):
        return n + extra

    app.client.create_topic("calc", 4)
    jobs = add.send_many([(1,), [2], {"n": 3, "extra": 10}, (4,)])
    assert len({j.id for j in jobs}) == 4 and sorted(j.queue for j in jobs) == [0, 1, 2, 3]
    for job in jobs:
        where = json.loads(app.client.meta.get(job_index("rmq", job.id)))
        assert where == {"topic": "calc", "queue": job.queue, "group": "workers", "task": add.name}
        assert 0 < app.client.meta.pttl(job_index("rmq", job.id)) <= app.client.result_ttl_ms
        assert app.job(job.id).status() == "queued"
    run_until_idle(app)
    assert [j.result(timeout=5) for j in jobs] == [1, 2, 13, 4]
    assert app.job(jobs[2].id).result(timeout=1) == 13


def test_every_run_is_checked_before_any_is_sent(app):
    @app.task(topic="calc")
    def add(n, *, extra=0):
        return n + extra

    app.client.create_topic("calc", 2)
    with pytest.raises(InvalidMessage, match="cannot send .*add: too many positional"):
        add.send_many([(1,), (1, 2, 3)])
    with pytest.raises(InvalidMessage, match="unexpected keyword argument 'bogus'"):
        add.send_many([{"n": 1}, {"n": 1, "bogus": 2}])  # a shape checked once, each its own
    with pytest.raises(InvalidMessage, match="a tuple or list.*a dict.*not 5"):
        add.send_many([(1,), 5])
    assert stored(app, "calc") == 0


def test_a_bounded_topic_sends_them_one_by_one_still_indexed(app):
    @app.task(topic="capped")
    def echo(n):
        return n

    app.client.create_topic("capped", 2, max_backlog=10)
    jobs = echo.send_many((n,) for n in range(5))
    assert all(app.client.meta.exists(job_index("rmq", j.id)) for j in jobs)
    run_until_idle(app)
    assert [j.result(timeout=5) for j in jobs] == list(range(5))


def test_send_many_async_gives_jobs_awaited(client):
    app = App(client)

    @app.task(topic="calc")
    def square(n):
        return n * n

    async def send() -> list[int]:
        jobs = await square.send_many_async([(n,) for n in range(6)])
        await asyncio.to_thread(run_until_idle, app)
        results = [await j.result(timeout=5) for j in jobs]
        assert await jobs[0].status() == "done"
        await app.async_client.aclose()
        return results

    assert asyncio.run(send()) == [0, 1, 4, 9, 16, 25]


def test_a_client_that_keeps_no_results_sends_clean_entries_without_indexes(url):
    """result_ttl=0: no id index, as for a single send (found by a review: the batch wrote
    the index's arguments into the entry, and the script raised after storing it)."""
    app = App(Client(url, result_ttl=0))

    @app.task(topic="noresults")
    def add(x, y):
        return x + y

    app.client.create_topic("noresults", 1)
    jobs = add.send_many([(1, 2), (3, 4)])
    stream = app.client.router.queue_keys("noresults", 0).stream
    entries = [fields for _, fields in app.client.meta.xrange(stream)]
    assert [set(f) for f in entries] == [{b"id", b"body", b"created"}] * 2
    assert [f[b"id"].decode() for f in entries] == [j.id for j in jobs]
    assert not any(app.client.meta.exists(job_index("rmq", j.id)) for j in jobs)
    app.client.close()


def test_bad_runs_are_refused_with_one_clear_error(app):
    @app.task(topic="calc")
    def add(n, *, extra=0):
        return n + extra

    with pytest.raises(InvalidMessage, match="runs must be an iterable"):
        add.send_many(None)
    with pytest.raises(InvalidMessage, match="cannot send .*add"):
        add.send_with_options(args=None)
    with pytest.raises(InvalidMessage, match="cannot send .*add"):
        add.send_with_options(args=5)
    assert add.send_many([]) == []
    biggest = app.task(topic="calc", name="biggest")(max)  # no signature Python can tell
    for args, kwargs in ((None, None), (5, None), ((1,), [("a", 1)])):
        with pytest.raises(InvalidMessage, match="cannot send biggest: args must be"):
            biggest.send_with_options(args=args, kwargs=kwargs)


def test_a_batch_that_stops_says_which_jobs_it_stored(app):
    """Its error's `jobs` gives the stored runs' jobs (None for the rest), as a bounded
    topic that fills up stops a batch."""

    @app.task(topic="capped")
    def echo(n):
        return n

    app.client.create_topic("capped", 1, max_backlog=3)
    with pytest.raises(TopicFull) as full:
        echo.send_many((n,) for n in range(5))
    assert [type(j).__name__ for j in full.value.jobs] == ["Job"] * 3 + ["NoneType"] * 2
    assert [app.job(j.id).status() for j in full.value.jobs[:3]] == ["queued"] * 3
