"""Cancelling a job on a real server: every group honours it, a finished job is not
cancelled, and a job that finished while being cancelled reads done."""

from __future__ import annotations

import time

from redismq import Client
from redismq.job import Job
from tests.conftest import round_trips


def test_a_cancel_is_honoured_by_every_group(client):
    client.create_topic("fan", queues=1)
    first = client.consumer("fan", "first")
    second = client.consumer("fan", "second")
    mid = client.send("fan", {"n": 1})
    assert Job(client, mid, "fan", 0, "first").cancel()
    assert first.receive(count=10, block=0.2) == []
    assert second.receive(count=10, block=0.2) == []
    assert first.backlog() == 0 and second.backlog() == 0


def test_a_job_that_finished_while_being_cancelled_reads_done(client, app):
    @app.task(topic="race")
    def work():
        return "finished"

    job = work.send()
    consumer = client.consumer("race", work.group)
    [msg] = consumer.receive(count=10, block=1)
    # The handler returned; before its batch is settled, someone cancels the job.
    assert job.cancel()
    assert consumer.ack_many([msg], ["finished"]) == 1
    assert job.status() == "done"
    assert job.result(timeout=1) == "finished"
    assert not job.cancel()  # finished: refused
    assert job.status() == "done"


def test_cancel_marks_expire(url):
    short = Client(url, done_ttl=0.5, result_ttl=0.5)
    try:
        short.create_topic("brief", queues=1)
        consumer = short.consumer("brief", "g")
        ids = [short.send("brief", 0)]
        assert Job(short, ids[0], "brief", 0, "g").cancel()
        assert consumer.receive(count=10, block=0.2) == []
        time.sleep(0.7)
        ids.append(short.send("brief", 1))
        assert Job(short, ids[1], "brief", 0, "g").cancel()  # prunes what expired
        marks = short.meta.zrange(short.router.queue_keys("brief", 0).cancelled, 0, -1)
        assert marks == [ids[1].encode()]
    finally:
        short.close()


def test_a_finished_job_is_not_cancelled_after_its_done_record_expired(url):
    from redismq import App

    short = Client(url, done_ttl=0.3, result_ttl=60)
    try:
        app = App(short)

        @app.task(topic="old")
        def work():
            return 1

        job = work.send()
        consumer = short.consumer("old", work.group)
        consumer.ack_many(consumer.receive(count=10, block=1), [1])
        time.sleep(0.5)
        other = work.send()
        consumer.ack_many(consumer.receive(count=10, block=1), [1])  # prunes the done record
        assert not job.cancel()
        assert job.result(timeout=1) == 1
        assert other.result(timeout=1) == 1
    finally:
        short.close()


def test_the_canceller_looks_for_every_running_job_in_one_round_trip(client, app):
    """At --concurrency 200 the canceller asked Redis once per running job, every half
    second (200 round trips); it now asks once for all the jobs of a topic's queues."""
    from redismq.processing import Running
    from redismq.workers.limits import Canceller
    from redismq.workers.worker import Loop

    @app.task(topic="cancels")
    def work(n):
        return n

    client.create_topic("cancels", queues=2)
    jobs = [work.send(i) for i in range(10)]
    sub = app.subscriptions[("cancels", "workers")]
    loops = []
    for _ in jobs:
        loop = Loop(client.consumer("cancels", "workers"), sub, 1, [])
        [msg] = loop.consumer.receive(count=1, block=None)
        loop.runner.running = Running(msg, "cancels.work", time.monotonic(), None)
        loops.append(loop)
    victim = next(loop for loop in loops if loop.runner.running.message.id == jobs[3].id)
    assert jobs[3].cancel()
    stuck: list[int] = []
    with round_trips() as trips:
        Canceller(loops, lambda: stuck.append(1)).tick()
    looks = [t for t in trips if b"\r\nZSCORE\r\n" in t or b"\r\nZMSCORE\r\n" in t]
    stopped = [loop for loop in loops if loop.runner.abandoned]
    assert stopped == [victim] and stuck == [1]  # a sync job: its process is replaced
    assert jobs[3].status() == "cancelled"
    # one look: a pipeline of a ZMSCORE per queue (it was a ZSCORE round trip per job)
    assert len(looks) == 1 and looks[0].count(b"\r\nZMSCORE\r\n") == 2
