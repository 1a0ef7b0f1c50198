"""Issue 13, item 2: a task consumer records its jobs as running in the round trip of its
check for done and cancelled messages (no round trip of its own before a batch runs); a
first delivery is still checked (a job cancelled while queued keeps its entry). Real server."""

from __future__ import annotations

from redismq import job as job_module
from redismq.job import parse_running, running_score
from redismq.message import now_ms
from redismq.processing import BatchRunner
from tests.conftest import round_trips


def test_received_jobs_read_running_before_their_batch_runs(client, app):
    @app.task(topic="marks")
    def work(n):
        return n

    jobs = [work.send(i) for i in range(3)]
    consumer = client.consumer("marks", "workers", create=True)
    consumer.marks_running = True
    batch = consumer.receive(count=10, block=1)
    assert sorted(m.id for m in batch) == sorted(j.id for j in jobs)
    keys = [q.keys.running("workers") for q in consumer.queues.values()]
    running = [m for k in keys for m in client.meta.zrange(k, 0, -1)]
    assert sorted(m.decode() for m in running) == sorted(j.id for j in jobs)
    counts = BatchRunner(consumer, app.subscriptions[("marks", "workers")]).run(batch, marked=True)
    assert counts.processed == 3
    assert [j.status() for j in jobs] == ["done"] * 3


def test_a_job_cancelled_while_queued_is_settled_at_its_first_delivery_not_run(client, app):
    ran = []

    @app.task(topic="marks")
    def work(n):
        ran.append(n)

    client.create_topic("marks", queues=2)
    cancelled, kept = work.send(1), work.send(2)
    assert {cancelled.queue, kept.queue} == {0, 1}
    # Entry ids are unique per stream only: give both entries the same one.
    for job in (cancelled, kept):
        stream = client.router.queue_keys("marks", job.queue).stream
        [(entry_id, fields)] = client.meta.xrange(stream)
        client.meta.delete(stream)
        client.meta.xadd(stream, fields, id="1-1")
    assert cancelled.cancel()
    consumer = client.consumer("marks", "workers", create=True)
    consumer.marks_running = True
    batch = consumer.receive(count=10, block=1)
    assert [m.id for m in batch] == [kept.id]
    BatchRunner(consumer, app.subscriptions[("marks", "workers")]).run(batch, marked=True)
    assert ran == [2]
    assert cancelled.status() == "cancelled" and kept.status() == "done"
    assert not any(client.meta.zcard(q.keys.running("workers")) for q in consumer.queues.values())


def test_without_marks_a_consumer_records_nothing_at_receive(client, app):
    @app.task(topic="marks")
    def work(n):
        return n

    job = work.send(1)
    consumer = client.consumer("marks", "workers", create=True)
    [msg] = consumer.receive(count=10, block=1)
    key = consumer.queues[msg.queue].keys.running("workers")
    assert client.meta.zcard(key) == 0
    BatchRunner(consumer, app.subscriptions[("marks", "workers")]).run([msg])
    assert job.status() == "done"


def test_a_receive_of_queued_jobs_is_one_round_trip(client, app):
    """The read script reads, checks for done and cancelled, and records running at once
    (a pipelined check after the read was a second round trip per batch)."""

    @app.task(topic="marks")
    def work(n):
        return n

    client.create_topic("marks", queues=2)
    consumer = client.consumer("marks", "workers", create=True)
    consumer.marks_running = True
    consumer.receive(count=10, block=None)  # its first looks for due messages and leases
    done_before, cancelled, queued = work.send(0), work.send(1), work.send(2)
    first = consumer.receive(count=1, block=None)
    BatchRunner(consumer, app.subscriptions[("marks", "workers")]).run(first, marked=True)
    assert [m.id for m in first] == [done_before.id] and done_before.status() == "done"
    assert cancelled.cancel()
    # The completed message is sent again under its id: a new entry of a done message.
    stream = client.router.queue_keys("marks", done_before.queue).stream
    [(_, fields)] = [
        e for e in client.meta.xrange(stream) if e[1][b"id"] == done_before.id.encode()
    ]
    client.meta.xadd(stream, fields)

    with round_trips() as trips:
        batch = consumer.receive(count=10, block=None)
    assert [m.id for m in batch] == [queued.id]
    # no round trip of its own checks or marks them (a look for due messages may come)
    assert not [t for t in trips if b"ZMSCORE" in t.upper() or b"ZADD" in t.upper()]
    running = [
        m.decode()
        for q in consumer.queues.values()
        for m in client.meta.zrange(q.keys.running("workers"), 0, -1)
    ]
    assert running == [queued.id]
    assert cancelled.status() == "cancelled" and done_before.status() == "done"


def test_a_blocking_read_checks_what_it_wakes_with_by_the_same_rule(client, app):
    """What a blocking read brings (the read script cannot block) is checked by the `check`
    script: the same verdicts, one round trip; a done message is settled, not returned."""

    @app.task(topic="marks")
    def work(n):
        return n

    client.create_topic("marks", queues=1)
    done_before = work.send(0)
    sub = app.subscriptions[("marks", "workers")]
    first = client.consumer("marks", "workers", create=True)
    BatchRunner(first, sub).run(first.receive(count=1, block=1))
    assert done_before.status() == "done"
    stream = client.router.queue_keys("marks", 0).stream
    [(_, fields)] = client.meta.xrange(stream)
    waiting = client.consumer("marks", "workers")
    waiting.marks_running = True
    # a wait that found nothing: its next read waits again at once, without the read script
    assert waiting.receive(count=1, block=0.05) == []
    client.meta.xadd(stream, fields)  # the completed message, sent again under its id
    with round_trips() as trips:
        assert waiting.receive(count=10, block=1) == []
    assert [t for t in trips if b"\r\nBLOCK\r\n" in t]  # it came by the blocking read
    assert client.meta.xpending(stream, "workers")["pending"] == 0  # settled without a run
    assert waiting.receive(count=1, block=0.05) == []
    queued = work.send(1)
    [msg] = waiting.receive(count=10, block=1)
    assert msg.id == queued.id and msg.verdict == ""
    running = client.meta.zrange(client.router.queue_keys("marks", 0).running("workers"), 0, -1)
    assert [m.decode() for m in running] == [queued.id]


def test_a_marking_read_sweeps_the_marks_dead_workers_left_and_keeps_the_others(client, app):
    """Running marks older than the result window (a worker died with them) are swept by
    the read that marks, when a sweep is due; a recent one stays."""

    @app.task(topic="marks")
    def work(n):
        return n

    client.create_topic("marks", queues=1)
    key = client.router.queue_keys("marks", 0).running("workers")
    now = now_ms()
    client.meta.zadd(
        key,
        {
            "left-by-a-dead-worker": running_score(now - client.result_ttl_ms - 60_000, 1),
            "running-elsewhere": running_score(now - 1_000, 2),
        },
    )
    queued = work.send(1)
    consumer = client.consumer("marks", "workers", create=True)
    consumer.marks_running = True
    job_module._sweeps.clear()  # a sweep is due (at most one a minute per process)
    [msg] = consumer.receive(count=10, block=1)
    assert msg.id == queued.id
    marks = client.meta.zrange(key, 0, -1)
    assert sorted(marks) == sorted([b"running-elsewhere", queued.id.encode()])
    assert parse_running(client.meta.zscore(key, "running-elsewhere"))[1] == 2


def test_a_read_scores_a_mark_by_the_attempt_the_entry_says_as_the_worker_does(client, app):
    """The read script scores a running mark start ms × 1000 + attempt + 1, as
    `running_score` does, whatever attempt an entry says (one written by hand with a
    negative attempt too: the worker runs it as that attempt)."""

    @app.task(topic="marks")
    def work(n):
        return n

    client.create_topic("marks", queues=1)
    job = work.send(1)
    stream = client.router.queue_keys("marks", 0).stream
    [(_, fields)] = client.meta.xrange(stream)
    client.meta.delete(stream)
    client.meta.xadd(stream, {**fields, b"attempt": b"-1"})
    consumer = client.consumer("marks", "workers", create=True)
    consumer.marks_running = True
    before = now_ms()
    [msg] = consumer.receive(count=10, block=1)
    assert msg.id == job.id and msg.attempt == -1
    score = client.meta.zscore(consumer.queues[0].keys.running("workers"), job.id)
    started, attempt = parse_running(score)
    assert started >= before and running_score(started, msg.attempt + 1) == score
    assert attempt == running_score(0, msg.attempt + 1) == 0


def test_a_marking_read_counts_its_sweep_against_the_running_zset_it_swept(client, app):
    """The read script's sweep of a running zset is throttled by that zset's key, the key
    the other marking paths (`_check`, `mark_running`) throttle theirs by: at most one
    sweep a minute per zset per process. (The read's keys end with the count of
    takeovers since 6c86530: `keys[-1]` is no longer the running zset.)"""

    @app.task(topic="marks")
    def work(n):
        return n

    client.create_topic("marks", queues=1)
    key = client.router.queue_keys("marks", 0).running("workers")
    work.send(1)
    consumer = client.consumer("marks", "workers", create=True)
    consumer.marks_running = True
    job_module._sweeps.clear()  # a sweep is due
    assert len(consumer.receive(count=10, block=1)) == 1  # the read swept
    assert not job_module.sweep_due(key, now_ms())  # so no other sweep of it is due yet
