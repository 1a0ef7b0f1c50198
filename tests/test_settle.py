"""Settling outcomes on a real server: only the owner settles (rule 13), one bad result
fails alone, results land in their own job, and pruning follows the server's clock."""

from __future__ import annotations

import logging
import sqlite3
import time
from importlib import resources

import pytest

from redismq.consumer import CANCELLED
from tests import test_runtime

# The worker tests' fixtures: their runtime app bound to this test's client, its runs file.
rt = test_runtime.rt
db = test_runtime.db


def take_over(consumer, n: int, timeout: float = 15.0) -> list:
    """What `consumer` takes over once the leases expired (at its second look, or when
    they are long expired)."""
    got: list = []
    deadline = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        got += consumer.receive(count=10, block=0.2)
    return got


def test_ack_many_mixing_cancelled_and_results_writes_each_result_to_its_own_job(client, app):
    @app.task(topic="mixed")
    def work(n):
        return n

    client.create_topic("mixed", queues=1)
    jobs = [work.send(n) for n in range(4)]
    consumer = client.consumer("mixed", work.group)
    got = sorted(consumer.receive(count=10, block=1), key=lambda m: m.body["args"][0])
    assert len(got) == 4
    consumer.ack_many(got, [CANCELLED, "one", CANCELLED, "three"])
    assert jobs[1].result(timeout=1) == "one"
    assert jobs[3].result(timeout=1) == "three"
    assert client.meta.xpending(jobs[0].keys.stream, work.group)["pending"] == 0


def test_a_consumer_whose_lease_was_taken_over_settles_nothing(client, app, caplog):
    @app.task(topic="owned")
    def work(n):
        return n

    client.create_topic("owned", queues=1)
    jobs = [work.send(n) for n in range(4)]
    keys = jobs[0].keys
    group = work.group
    a = client.consumer("owned", group, name="a", visibility_timeout=0.2)
    b = client.consumer("owned", group, name="b", visibility_timeout=0.2)
    mine = sorted(a.receive(count=10, block=1), key=lambda m: m.body["args"][0])
    assert len(mine) == 4
    taken = take_over(b, 4)  # a's leases expire
    assert sorted(m.id for m in taken) == sorted(m.id for m in mine)

    caplog.set_level(logging.WARNING, "redismq.consumer")
    assert a.ack_many(mine[:1], [0]) == 0
    assert a.retry(mine[1], "ValueError: late", delay=0) == "lost"
    assert a.dead_letter(mine[2], "late") is False
    a.release(mine[3:])
    a.ack_many(mine[:1], [0])  # learned once already: no second warning

    pending = client.meta.xpending_range(keys.stream, group, "-", "+", 10)
    assert sorted(p["consumer"] for p in pending) == [b"b"] * 4
    assert client.meta.zcard(keys.done(group)) == 0
    assert client.meta.zcard(keys.retry(group)) == 0
    assert client.meta.xlen(keys.retry_stream(group)) == 0
    assert client.meta.xlen(keys.dead(group)) == 0
    assert client.meta.exists(keys.outcome(jobs[0].id)) == 0
    warnings = [r.getMessage() for r in caplog.records if "lease lost" in r.getMessage()]
    assert len(warnings) == 4
    assert all(any(m.id in w for w in warnings) for m in mine)

    assert b.ack_many(taken, [m.body["args"][0] for m in taken]) == 4
    assert [j.result(timeout=1) for j in jobs] == [0, 1, 2, 3]
    assert client.meta.xpending(keys.stream, group)["pending"] == 0


def test_a_settle_searches_the_pending_list_only_after_a_takeover(client):
    """While no entry of the queue changed hands since the read (the count of takeovers is
    the same), a settle takes what was read as its own without an XPENDING; after a
    takeover it searches, and leaves what it lost."""
    client.create_topic("counted", queues=1)
    client.send_many("counted", list(range(6)))
    a = client.consumer("counted", "g", name="a", visibility_timeout=0.2)
    b = client.consumer("counted", "g", name="b", visibility_timeout=0.2)

    def searches() -> int:
        return client.meta.info("commandstats").get("cmdstat_xpending", {}).get("calls", 0)

    first = a.receive(count=3, block=1)
    before = searches()
    assert a.ack_many(first) == 3
    assert searches() == before
    rest = a.receive(count=3, block=1)
    taken = take_over(b, 3)
    assert len(taken) == 3
    before = searches()
    assert a.ack_many(rest) == 0
    assert searches() > before
    assert b.ack_many(taken) == 3
    assert client.meta.xpending("rmq:{counted#0}:stream", "g")["pending"] == 0


def test_a_runner_does_not_start_messages_whose_lease_it_learned_was_lost(client, app):
    from redismq.processing import BatchRunner

    runs = []

    @app.consumer("taken", group="g")
    def handle(msg):
        runs.append(msg.id)

    client.create_topic("taken", queues=1)
    client.send_many("taken", [1, 2])
    a = client.consumer("taken", "g", name="a", visibility_timeout=0.2)
    b = client.consumer("taken", "g", name="b", visibility_timeout=0.2)
    mine = a.receive(count=10, block=1)
    assert len(take_over(b, 2)) == 2
    a.lease_lost(a.renew(mine))  # what the worker's lease keeper does
    counts = BatchRunner(a, app.subscriptions[("taken", "g")]).run(mine)
    assert runs == []
    assert (counts.lost, counts.processed) == (2, 0)
    assert client.meta.xpending("rmq:{taken#0}:stream", "g")["pending"] == 2


def test_a_message_received_again_after_its_lease_was_lost_is_owned_again(client):
    client.create_topic("back", queues=1)
    client.send("back", 1)
    a = client.consumer("back", "g", name="a", visibility_timeout=0.2)
    b = client.consumer("back", "g", name="b", visibility_timeout=0.2)
    [first] = a.receive(count=10, block=1)
    assert len(take_over(b, 1)) == 1
    a.lease_lost(a.renew([first]))
    assert a.is_lost(first)
    [again] = take_over(a, 1)  # b stalls in turn: a takes the message back
    assert not a.is_lost(again)
    assert a.ack_many([again]) == 1


def test_a_result_or_reason_that_cannot_be_stored_fails_alone(client, app):
    from redismq import JobFailed
    from redismq.processing import BatchRunner

    @app.task(topic="enc", max_retries=0)
    def work(kind):
        if kind == "surrogate":
            return {"name": "caf\udcff"}  # as os.listdir gives an undecodable file name
        if kind == "deep":
            nested: list = []
            for _ in range(100_000):
                nested = [nested]
            return nested
        if kind == "reason":
            raise FileNotFoundError("no such file: caf\udcff")
        return kind

    client.create_topic("enc", queues=1)
    kinds = ["a", "surrogate", "b", "deep", "reason", "c"]
    jobs = {k: work.send(k) for k in kinds}
    consumer = client.consumer("enc", work.group)
    batch = consumer.receive(count=10, block=1)
    assert len(batch) == len(kinds)
    counts = BatchRunner(consumer, app.subscriptions[("enc", work.group)]).run(batch)
    assert (counts.processed, counts.dead) == (3, 3)
    for k in ("a", "b", "c"):
        assert jobs[k].result(timeout=1) == k
    for k in ("surrogate", "deep", "reason"):
        assert jobs[k].status() == "dead"
        with pytest.raises(JobFailed) as failed:
            jobs[k].result(timeout=1)
        str(failed.value).encode()  # a readable reason, valid UTF-8
    reasons = {d.id: d.reason for d in client.dead_letters("enc", work.group)}
    assert "cannot be stored" in reasons[jobs["surrogate"].id]
    assert "cannot be stored" in reasons[jobs["deep"].id]
    assert "FileNotFoundError: no such file: caf\\udcff" in reasons[jobs["reason"].id]
    assert client.meta.xpending(jobs["a"].keys.stream, work.group)["pending"] == 0


def test_ack_many_with_a_result_that_cannot_be_stored_retries_that_one(client, app):
    @app.task(topic="enc2")
    def work(n):
        return n

    client.create_topic("enc2", queues=1)
    good, bad = work.send(1), work.send(2)
    consumer = client.consumer("enc2", work.group)
    got = sorted(consumer.receive(count=10, block=1), key=lambda m: m.body["args"][0])
    assert consumer.ack_many(got, ["fine", "caf\udcff"]) == 1
    assert good.result(timeout=1) == "fine"
    assert bad.status() == "retrying"
    assert "cannot be stored" in bad.info()["error"]
    assert client.meta.zcard(bad.keys.retry(work.group)) == 1


def test_a_message_already_done_is_not_dead_lettered_too(client):
    client.create_topic("twice", queues=1)
    a = client.consumer("twice", "g", name="a")
    b = client.consumer("twice", "g", name="b")
    client.send("twice", 1)
    [first] = a.receive(count=10, block=1)
    # The same message comes back as a second entry (as after a lost XACK on failover).
    stream = client.router.queue_keys("twice", 0).stream
    client.meta.xadd(stream, client.meta.xrange(stream)[0][1])
    [second] = b.receive(count=10, block=1)
    assert second.id == first.id
    assert a.ack_many([first]) == 1
    assert b.dead_letter(second, "ValueError: too late") is True  # settled, as a duplicate
    assert client.dead_letters("twice", "g") == []
    assert client.meta.xpending(stream, "g")["pending"] == 0


@pytest.mark.fault  # pauses a worker on purpose
@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_paused_worker_whose_job_was_taken_over_lets_go(client, url, processes, rt, db, kind):
    """A sync job runs on a thread of its own; an async one on its topic's one event loop."""
    import os
    import signal

    from redismq.status import topic_status
    from tests.conftest import wait_for
    from tests.test_runtime import rows, start_worker

    task = rt.slow_retried if kind == "sync" else rt.async_slow_retried
    job = task.send(4.0, "x")
    args = ("--processes", "1", "--visibility-timeout", "2", "--log-level", "INFO")
    first = start_worker(processes, url, *args, start_new_session=True)
    assert wait_for(lambda: len(rows(db, "slow-start")) == 1, timeout=30)
    with sqlite3.connect(db, timeout=30) as hold:  # stopped in no half-done write of its own
        hold.execute("BEGIN EXCLUSIVE")  # (a periodic tick's: the runs file would stay locked)
        os.killpg(first.pid, signal.SIGSTOP)  # a GC pause, a VM steal: past its lease
        hold.rollback()
    try:
        second = start_worker(processes, url, *args, start_new_session=True)
        assert wait_for(lambda: len(rows(db, "slow-start")) == 2, timeout=30)
    finally:
        os.killpg(first.pid, signal.SIGCONT)
    assert job.result(timeout=30) == "x"
    assert wait_for(lambda: len(rows(db, "slow-end")) == 2, timeout=30)  # both runs ended
    time.sleep(1.0)  # the first worker settles (or not) what it ran
    for w in (first, second):
        os.killpg(w.pid, signal.SIGTERM)
        assert w.wait(30) == 0
    log = first.stdout.read()
    lost = [line for line in log.splitlines() if "lease lost" in line and job.id in line]
    assert len(lost) == 1, log  # (a periodic tick taken over meanwhile has its own line)
    row = next(g for g in topic_status(client, task.topic)["groups"] if g["name"] == job.group)
    assert (row["done"], row["duplicates"], row["dead"], row["pending"]) == (1, 0, 0, 0)


IDS_LESS = """
local out = {}
for i = 1, #ARGV, 2 do out[#out + 1] = id_less(ARGV[i], ARGV[i + 1]) and 1 or 0 end
return out
"""
IDS = ["0-1", "9-5", "9-10", "10-0", "10-2", "99-100", "100-0", "1733000000000-0"]


def test_entry_ids_are_compared_as_numbers_by_the_scripts_helper(client):
    """`id_less` (scripts/_ids.lua, what settle finds the range of its entries by) orders
    ids of parts of any length as numbers, on a real server."""
    helper = (resources.files("redismq") / "scripts" / "_ids.lua").read_text()
    script = client.meta.register_script(helper + IDS_LESS)
    pairs = [(a, b) for a in IDS for b in IDS]
    got = script(keys=[], args=[x for pair in pairs for x in pair])
    number = [tuple(map(int, a.split("-"))) < tuple(map(int, b.split("-"))) for a, b in pairs]
    assert [bool(x) for x in got] == number


def test_a_consumer_settles_entries_whose_ids_differ_in_length(client, app):
    """The ownership range of a settle spans ids whose ms and sequence parts differ in
    length (an entry written by hand with a small id among the others)."""
    client.create_topic("lens", queues=1)
    stream = client.router.queue_keys("lens", 0).stream
    for eid in ["9-5", "9-10", "10-2", "100-0"]:
        client.meta.xadd(stream, {"id": f"m{eid}", "body": "1"}, id=eid)
    consumer = client.consumer("lens", "g", create=True)
    client.meta.xgroup_setid(stream, "g", "0")
    batch = consumer.receive(count=10, block=1)
    assert sorted(m.entry_id for m in batch) == ["10-2", "100-0", "9-10", "9-5"]
    settled = consumer.settle_many(batch)
    assert (settled.completed, settled.lost) == (4, [])
    assert client.meta.xpending(stream, "g")["pending"] == 0


def test_a_settle_made_again_touches_nothing(client):
    """A settle that runs twice (redis-py sends a pipeline again after a dropped connection
    or a timeout; a receive runs again every settle that went with its read when one of
    them failed) finds the entries no longer pending the second time: it touches nothing
    and counts no duplicates (settle.lua: entries settled already are left untouched and
    reported), whatever the count of takeovers says."""
    client.create_topic("again", queues=1)
    client.send_many("again", [1, 2])
    a = client.consumer("again", "g", name="a")
    got = a.receive(count=10, block=1)
    assert len(got) == 2
    assert a.settle_many(got).completed == 2
    again = a.settle_many(got)
    assert again.completed == 0 and again.duplicates == 0
    stats = client.meta.hgetall(client.router.queue_keys("again", 0).stats("g"))
    assert b"duplicates" not in stats


def let_go_of(consumer, msg, how: str) -> None:
    """The consumer lets go of a message it holds: `dead`, `retry` or `release`."""
    if how == "dead":
        assert consumer.dead_letter(msg, "bad") is True
    elif how == "retry":
        assert consumer.retry(msg, "ValueError: again", delay=0) == "retry"
    else:
        consumer.release([msg])


@pytest.mark.parametrize("let_go", ["dead", "retry", "release"])
def test_a_message_this_consumer_let_go_of_is_not_settled_done_afterwards(client, let_go):
    """Once the consumer dead-lettered, retried or released a message, its entry is no
    longer its own (rule 13): an ack of it afterwards (a late outcome of the same run)
    records nothing, so that the message never ends both done and dead, and its retry or
    released copy is not skipped as done."""
    client.create_topic("let-go", queues=1)
    client.send("let-go", {"n": 1})
    a = client.consumer("let-go", "g", name="a")
    [m] = a.receive(count=1, block=1)
    let_go_of(a, m, let_go)
    assert a.ack_many([m]) == 0
    keys = client.router.queue_keys("let-go", 0)
    assert client.meta.zscore(keys.done("g"), m.id) is None
    assert client.meta.hget(keys.stats("g"), "done") is None


@pytest.mark.parametrize("let_go", ["dead", "retry", "release"])
def test_a_settle_beside_a_message_let_go_of_settles_only_the_others(client, let_go):
    """One settle of two messages read together, one of which the consumer let go of in
    between (a dead letter, a retry, a release: no longer its own): the other completes,
    and the one let go of is not recorded done (the let-go counts, so the settle searches
    the pending list instead of taking what it read as still its own)."""
    client.create_topic("beside", queues=1)
    client.send_many("beside", [{"n": 1}, {"n": 2}])
    a = client.consumer("beside", "g", name="a")
    gone, kept = a.receive(count=2, block=1)
    let_go_of(a, gone, let_go)
    settled = a.settle_many([gone, kept])
    assert settled.completed == 1 and [m.id for m in settled.lost] == [gone.id]
    keys = client.router.queue_keys("beside", 0)
    assert client.meta.zscore(keys.done("g"), gone.id) is None
    assert client.meta.zscore(keys.done("g"), kept.id) is not None


def test_a_settle_made_again_beside_new_messages_counts_no_duplicates(client):
    """A settle whose reply was lost (a dropped connection, a timeout: BrokerUnavailable)
    is kept and sent again with the next one (BatchRunner._flush, the slots' settling):
    the messages it settled already are no longer pending, the new ones are. Those settled
    already must not be taken as this consumer's again because their neighbours are still
    pending (all or nothing does not hold here): no duplicate is counted."""
    client.create_topic("again-mixed", queues=1)
    client.send_many("again-mixed", [1, 2])
    a = client.consumer("again-mixed", "g", name="a")
    first, second = a.receive(count=10, block=1)
    assert a.settle_many([first]).completed == 1  # ran, but its reply was lost
    again = a.settle_many([first, second])  # kept, sent again with the next finished one
    assert again.completed == 1
    assert again.duplicates == 0
    stats = client.meta.hgetall(client.router.queue_keys("again-mixed", 0).stats("g"))
    assert b"duplicates" not in stats


def test_a_runner_whose_settle_reply_was_lost_counts_no_duplicates(client, app):
    """BatchRunner keeps a settle that raised BrokerUnavailable and settles it with the
    next batch; when the lost one had run on the server, its messages must not be counted
    again as duplicates in the group's stats (they were completed once, and not delivered
    twice)."""
    from redismq.errors import BrokerUnavailable
    from redismq.processing import BatchRunner

    @app.consumer("lost-reply", group="g")
    def handle(msg):
        pass

    client.create_topic("lost-reply", queues=1)
    client.send_many("lost-reply", [1, 2, 3, 4])
    a = client.consumer("lost-reply", "g", name="a")
    runner = BatchRunner(a, app.subscriptions[("lost-reply", "g")])
    real = a.settle_many
    calls = []

    def reply_lost_once(messages, results=None):
        settled = real(messages, results)
        calls.append(len(messages))
        if len(calls) == 1:
            raise BrokerUnavailable("the connection dropped before the reply")
        return settled

    a.settle_many = reply_lost_once
    batch = a.receive(count=2, block=1)
    with pytest.raises(BrokerUnavailable):
        runner.run(batch)
    counts = runner.run(a.receive(count=2, block=1))
    assert calls == [2, 4]
    assert counts.duplicates == 0
    stats = client.meta.hgetall(client.router.queue_keys("lost-reply", 0).stats("g"))
    assert stats[b"done"] == b"4"
    assert b"duplicates" not in stats


@pytest.mark.parametrize("stale_takeover", [False, True], ids=["deleted", "stale-takeover"])
def test_a_settle_after_its_group_was_deleted_and_made_again_settles_nothing(
    client, stale_takeover
):
    """A consumer still holding an entry when its group is deleted (--force) and made again
    does not take the entry's new reader's lease as its own: the group made again starts
    its count of takeovers at a random number, also where a stale consumer's takeover tried
    while the group was gone (its claim fails, its count does not) left a count from 1."""
    topic = f"remade-{stale_takeover:d}"
    client.create_topic(topic, queues=1)
    client.send_many(topic, ["hello"])
    stale = client.consumer(topic, "g", name="stale", ordered=True)

    def delete() -> None:
        client.delete_group(topic, "g", force=True)
        if stale_takeover:
            with pytest.raises(Exception, match="NOGROUP"):
                stale.rebalance()

    delete()
    a = client.consumer(topic, "g", name="a")
    mine = a.receive(count=1, block=1)
    assert len(mine) == 1
    delete()
    b = client.consumer(topic, "g", name="b")
    again = b.receive(count=1, block=1)
    assert [m.id for m in again] == [m.id for m in mine]

    assert a.ack_many(mine) == 0
    stream = client.router.queue_keys(topic, 0).stream
    pending = client.meta.xpending_range(stream, "g", "-", "+", 10)
    assert [p["consumer"] for p in pending] == [b"b"]
    assert b.ack_many(again) == 1
    assert client.meta.xpending(stream, "g")["pending"] == 0


def test_a_batch_stopped_by_a_lost_broker_keeps_its_unfinished_messages(client, app, monkeypatch):
    """A broker lost mid-batch (here: the failed job's retry cannot be written) ends the
    batch with BrokerUnavailable. The job that failed and the ones not started stay this
    consumer's: kept (so renewed) and received first once the broker is back. Before,
    the next batch replaced them in what the runner held: nobody renewed their leases,
    and after the visibility timeout they were taken over and each charged an attempt
    as if its worker had died."""
    from redismq import BrokerUnavailable
    from redismq.processing import BatchRunner

    runs = []

    @app.consumer("stranded", group="g", max_retries=3)
    def handle(msg):
        runs.append(msg.body)
        if msg.body == 0:
            raise RuntimeError("fails: its retry is written at once")

    client.create_topic("stranded", queues=1)
    ids = client.send_many("stranded", [0, 1, 2, 3])
    consumer = client.consumer("stranded", "g")
    batch = consumer.receive(count=10, block=1)

    def broker_gone(*args, **kwargs):
        raise BrokerUnavailable("redis://127.0.0.1:1: the broker went away")

    monkeypatch.setattr(consumer, "retry", broker_gone)
    runner = BatchRunner(consumer, app.subscriptions[("stranded", "g")])
    with pytest.raises(BrokerUnavailable):
        runner.run(batch)
    assert runs == [0]
    assert [m.id for m in consumer.kept()] == ids  # renewed by the worker's lease keeper
    monkeypatch.undo()
    again = consumer.receive(count=10, block=0.1)  # the broker is back
    assert [m.id for m in again] == ids
    counts = runner.run(again)
    assert runs == [0, 0, 1, 2, 3]
    assert (counts.processed, counts.retried) == (3, 1)


def test_a_batch_stopped_after_a_job_finished_does_not_keep_that_job_to_run_again(client, app):
    """What stops a batch after a job's outcome was recorded (here a hook that raises after
    a success) keeps the jobs not run, not the one that finished: it is settled as done,
    not received and run again."""
    from redismq.hooks import Hooks
    from redismq.processing import BatchRunner

    runs = []

    class Breaks(Hooks):
        def after_process(self, msg, task, outcome, duration, error, **kwargs):
            raise RuntimeError("a hook that breaks")

    @app.consumer("stopped", group="g")
    def handle(msg):
        runs.append(msg.body)

    client.create_topic("stopped", queues=1)
    ids = client.send_many("stopped", [0, 1, 2])
    consumer = client.consumer("stopped", "g")
    runner = BatchRunner(consumer, app.subscriptions[("stopped", "g")], [Breaks()])
    with pytest.raises(RuntimeError, match="a hook that breaks"):
        runner.run(consumer.receive(count=10, block=1))
    assert runs == [0]
    assert [m.id for m in consumer.kept()] == ids[1:]
    assert [m.id for m in runner.held()] == ids[:1]  # finished: held until settled
    runner.hooks.pop()
    counts = runner.run(consumer.receive(count=10, block=0.1))
    assert runs == [0, 1, 2] and counts.processed == 3  # the first settled with them
    assert client.meta.xpending("rmq:{stopped#0}:stream", "g")["pending"] == 0
