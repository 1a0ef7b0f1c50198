"""Issue 13 (idle latency): what a blocking read wakes with is judged (done, cancelled, to
run) and recorded as running by the `woken` script, sent behind the read in the same
pipeline: no round trip between the wake-up and the job. Where the script cannot tell
which entry the read brought (the consumer holds others), or the server lost the script,
the `check` script judges it after, as before. Real server."""

from __future__ import annotations

import hashlib
import threading
import time
from typing import Any

import pytest
import redis

from redismq import BrokerUnavailable
from redismq.consumer import Consumer
from redismq.processing import BatchRunner
from redismq.scripts import Scripts, source
from tests.conftest import round_trips, wait_for


@pytest.fixture
def work(client: Any, app: Any) -> Any:
    """A task of the topic "woken" (one queue) that records what it ran in `work.ran`."""
    ran: list[int] = []

    @app.task(topic="woken")
    def work(n: int) -> int:
        ran.append(n)
        return n

    client.create_topic("woken", queues=1)
    work.ran = ran
    return work


def waiting(client: Any) -> tuple[Consumer, list[Any]]:
    """A marking consumer of "woken" that took what was queued and then waited for nothing
    (so that its next read waits at once): it and what it took."""
    consumer = client.consumer("woken", "workers", create=True)
    consumer.marks_running = True
    held = consumer.receive(count=10, block=None)
    assert consumer.receive(count=1, block=0.05) == []
    # Its next blocking read would be cut short for the next look for due messages (within
    # 250 ms), maybe before the test wakes it on a loaded machine: no look for a minute.
    consumer._pace.next_move = consumer._pace.next_claim = time.monotonic() + 60
    return consumer, held


def receive_woken(client: Any, consumer: Consumer, wake: Any) -> tuple[list[Any], list[bytes]]:
    """`consumer.receive` blocked on an empty topic, woken by `wake()`: what it returned and
    the round trips made meanwhile."""
    got: list[Any] = []

    def run() -> None:
        got.extend(consumer.receive(count=10, block=5))

    with round_trips() as trips:
        thread = threading.Thread(target=run)
        thread.start()
        assert wait_for(lambda: int(client.meta.info("clients")["blocked_clients"]) > 0)
        wake()
        thread.join(10)
    assert not thread.is_alive()
    return got, trips


def check_calls(trips: list[bytes]) -> list[bytes]:
    """The round trips that called the `check` script."""
    sha = hashlib.sha1(source("check").encode()).hexdigest().encode()
    return [t for t in trips if sha in t]


def run(app: Any, consumer: Consumer, messages: list[Any]) -> None:
    BatchRunner(consumer, app.subscriptions[("woken", "workers")]).run(messages, marked=True)


def running(client: Any, consumer: Consumer) -> list[str]:
    key = consumer.queues[0].keys.running("workers")
    return sorted(m.decode() for m in client.meta.zrange(key, 0, -1))


def test_a_job_woken_by_a_blocking_read_is_judged_and_marked_in_its_round_trip(client, app, work):
    consumer, _ = waiting(client)
    jobs: list[Any] = []
    got, trips = receive_woken(client, consumer, lambda: jobs.append(work.send(1)))
    assert [m.id for m in got] == [jobs[0].id] and got[0].verdict == ""
    assert len([t for t in trips if b"\r\nBLOCK\r\n" in t]) == 1
    assert check_calls(trips) == []  # judged behind the read, not after it
    assert running(client, consumer) == [jobs[0].id]
    run(app, consumer, got)
    assert jobs[0].status() == "done"


def test_a_done_message_woken_by_a_blocking_read_is_settled_without_a_run(client, app, work):
    done_before = work.send(0)
    first, taken = waiting(client)
    run(app, first, taken)
    assert work.ran == [0] and done_before.status() == "done"
    stream = client.router.queue_keys("woken", 0).stream
    [(_, fields)] = client.meta.xrange(stream)
    consumer, _ = waiting(client)
    # the completed message, sent again under its id while the consumer waits
    got, trips = receive_woken(client, consumer, lambda: client.meta.xadd(stream, fields))
    assert got == [] and check_calls(trips) == []
    assert client.meta.xpending(stream, "workers")["pending"] == 0  # settled, not run
    assert work.ran == [0]


def test_a_consumer_holding_other_entries_has_what_it_wakes_with_checked_after(client, app, work):
    """The consumer holds an entry of the stream (received, not yet settled): the script
    cannot tell which is new and leaves it to the check, which judges it as before."""
    held_job = work.send(0)
    consumer, held = waiting(client)
    assert [m.id for m in held] == [held_job.id]
    jobs: list[Any] = []
    got, trips = receive_woken(client, consumer, lambda: jobs.append(work.send(1)))
    assert [m.id for m in got] == [jobs[0].id] and got[0].verdict == ""
    assert check_calls(trips)  # judged after the read
    assert running(client, consumer) == sorted([held_job.id, jobs[0].id])
    run(app, consumer, held + got)
    assert held_job.status() == jobs[0].status() == "done"


def test_a_wake_after_the_server_forgot_its_scripts_is_checked_after(client, app, work):
    consumer, _ = waiting(client)
    client.meta.script_flush()
    jobs: list[Any] = []
    got, trips = receive_woken(client, consumer, lambda: jobs.append(work.send(1)))
    assert [m.id for m in got] == [jobs[0].id] and got[0].verdict == ""
    assert check_calls(trips)  # judged after the read
    run(app, consumer, got)
    assert jobs[0].status() == "done"
    # loaded again: the next wake is judged behind its read
    assert consumer.receive(count=1, block=0.05) == []
    got, trips = receive_woken(client, consumer, lambda: jobs.append(work.send(2)))
    assert [m.id for m in got] == [jobs[1].id] and check_calls(trips) == []


def test_what_a_retry_stream_wakes_with_is_checked_after(client, app, work):
    """The script looks at the queues' own streams only (a few µs a stream at every wake):
    an entry of a retry stream, here a cancelled job's, is judged by the check after the
    read, and settled without a run."""
    job = work.send(0)
    stream = client.router.queue_keys("woken", 0).stream
    [(_, fields)] = client.meta.xrange(stream)
    assert job.cancel() is True
    consumer, held = waiting(client)
    assert held == []  # the queued copy, cancelled, was settled by the read
    retry = consumer.queues[0].keys.retry_stream("workers")
    assert client.meta.xpending(retry, "workers")["pending"] == 0
    got, trips = receive_woken(client, consumer, lambda: client.meta.xadd(retry, fields))
    assert got == [] and check_calls(trips)  # judged after the read, as cancelled
    assert client.meta.xpending(retry, "workers")["pending"] == 0  # settled, not run
    assert work.ran == []


def test_a_wait_leaves_the_mark_of_a_job_still_running_as_it_was(client, app, work):
    """A consumer that holds one entry of a stream (a job still running: an async topic's
    fetch thread waits while its slots run jobs) and waits for more: the script judges that
    entry again, and wrote its running mark again with the time of the wait, so that the
    job's start moved on at every wait (and a taken-over job's attempt in it was lost)."""
    job = work.send(0)
    consumer, held = waiting(client)
    assert [m.id for m in held] == [job.id]
    key = consumer.queues[0].keys.running("workers")
    marked = client.meta.zscore(key, job.id)
    started = job.describe()["started_at"]
    time.sleep(0.05)
    assert consumer.receive(count=1, block=0.05) == []  # a wait that woke with nothing
    assert client.meta.zscore(key, job.id) == marked
    assert started is not None and job.describe()["started_at"] == started


def failing_load(monkeypatch: Any, failing: str) -> None:
    """Loading the script `failing` fails (a connection reset then); the others load."""
    load = Scripts.load

    def fails(self: Scripts, name: str, on: Any = None) -> None:
        if name == failing:
            raise redis.ConnectionError(f"reset while loading {name} (test)")
        load(self, name, on)

    monkeypatch.setattr(Scripts, "load", fails)


def test_a_wake_whose_script_could_not_be_loaded_again_keeps_what_the_read_brought(
    client, app, work, monkeypatch
):
    """The read delivered an entry and the server no longer knew the `woken` script behind
    it; loading it again failed: the exception took the read's reply with it, and the entry
    stayed pending to a consumer that never returned it, until a takeover counted a crash."""
    consumer, _ = waiting(client)
    client.meta.script_flush()
    failing_load(monkeypatch, "woken")
    jobs: list[Any] = []
    got: list[Any] = []
    errors: list[BaseException] = []

    def wait() -> None:
        try:
            got.extend(consumer.receive(count=10, block=5))
        except BrokerUnavailable as exc:
            errors.append(exc)

    thread = threading.Thread(target=wait)
    thread.start()
    assert wait_for(lambda: int(client.meta.info("clients")["blocked_clients"]) > 0)
    jobs.append(work.send(1))
    thread.join(10)
    monkeypatch.undo()
    got += consumer.receive(count=10, block=0.05)
    assert [m.id for m in got] == [jobs[0].id], errors


def test_a_read_whose_settle_could_not_be_loaded_again_keeps_what_it_brought(
    client, app, work, monkeypatch
):
    """A read carries the last batch's settle in its round trip; the server knew the read
    script but no longer the settle script, and loading it again failed: the exception
    took the read's reply with it, and the entry it delivered stayed pending to this
    consumer, which never returned it."""
    first, second = work.send(1), work.send(2)
    consumer = client.consumer("woken", "workers", create=True)
    consumer.marks_running = True
    [taken] = consumer.receive(count=1, block=None)
    assert taken.id == first.id
    client.meta.script_flush()
    client.meta.script_load(source("read"))
    failing_load(monkeypatch, "settle")
    with pytest.raises(BrokerUnavailable):  # the settle failed, and says so
        consumer.receive(count=1, block=None, settle=consumer.settling([taken]))
    monkeypatch.undo()
    assert [m.id for m in consumer.receive(count=1, block=None)] == [second.id]
