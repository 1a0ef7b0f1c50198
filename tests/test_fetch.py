"""Fetch only what can start (rule 11): a read never returns more than asked, a topic's
queues are served in turns, nothing is handed back in steady state, and an expired lease
is found wherever it is in the pending list."""

from __future__ import annotations

import hashlib
import threading
import time
from collections import Counter

import pytest
import redis

from redismq import Client
from redismq.cli.bench_slow import SlowScenario, run_slow
from tests.conftest import round_trips, wait_for

TOPIC = "turns"


def _fill(client: Client, per_queue: int) -> None:
    client.create_topic(TOPIC, queues=4)
    for i in range(per_queue * 4):  # keyless sends take the queues round robin
        client.send_message(TOPIC, str(i).encode())


def test_a_read_of_one_over_many_streams_returns_one(client: Client) -> None:
    _fill(client, 3)
    consumer = client.consumer(TOPIC, "g")
    assert len(consumer.receive(count=1, block=None)) == 1
    assert len(consumer.receive(count=3, block=None)) == 3
    assert consumer.kept() == []
    pending = sum(
        client.meta.xpending(k.stream, "g")["pending"]
        for k in (client.router.queue_keys(TOPIC, q) for q in range(4))
    )
    assert pending == 4  # exactly what was handed out: nothing more fetched


def test_queues_are_served_in_turns(client: Client) -> None:
    _fill(client, 3)
    a = client.consumer(TOPIC, "g")
    b = client.consumer(TOPIC, "g")  # same process, same group: the turns are shared
    queues = [c.receive(count=1, block=None)[0].queue for c in (a, b, a, b, a, b, a, b)]
    assert sorted(queues[:4]) == [0, 1, 2, 3]
    assert sorted(queues[4:]) == [0, 1, 2, 3]


def test_an_expired_lease_behind_live_ones_is_taken_over(client: Client) -> None:
    client.create_topic(TOPIC, queues=1)
    for i in range(31):
        client.send_message(TOPIC, str(i).encode())
    live = client.consumer(TOPIC, "g", visibility_timeout=30)
    held = live.receive(count=31, block=None)
    assert len(held) == 31
    # The newest entry's consumer died a minute ago; the 30 before it are held and live.
    stream = client.router.queue_keys(TOPIC, 0).stream
    last = held[-1].entry_id
    client.meta.xclaim(stream, "g", "dead-consumer", 0, [last], idle=60_000)
    # (idle for over ten leases: a dead process's, taken at once, no second look needed)
    taker = client.consumer(TOPIC, "g", visibility_timeout=5)
    got = taker.receive(count=1, block=None)
    assert [m.entry_id for m in got] == [last]


def _calls(client: Client, command: str) -> int:
    return int(client.meta.info("commandstats").get(f"cmdstat_{command}", {}).get("calls", 0))


def test_consumers_of_one_client_share_their_looks(client: Client) -> None:
    _fill(client, 1)
    consumers = [client.consumer(TOPIC, "g", visibility_timeout=30) for _ in range(10)]
    client.meta.config_resetstat()
    for c in consumers:
        c.receive(count=1, block=None)
    # one look for due messages (a ZRANGE per waiting set: 4 delayed, 4 retry) and one
    # for expired leases (an XPENDING per stream), not one per consumer
    assert _calls(client, "zrange") == 8
    assert _calls(client, "xpending") == 8
    other = Client(client.url, namespace=client.namespace)  # another client looks for itself
    other.consumer(TOPIC, "g").receive(count=1, block=None)
    assert _calls(client, "zrange") == 16
    other.close()


def test_a_read_past_empty_streams_is_one_round_trip(client: Client) -> None:
    client.create_topic(TOPIC, queues=4)
    consumer = client.consumer(TOPIC, "g")
    consumer.receive(count=1, block=None)  # its first looks for due messages and leases
    last = client.router.queue_keys(TOPIC, 3).stream
    client.meta.xadd(last, {"id": "m1", "body": '"x"'})
    client.meta.config_resetstat()
    [msg] = consumer.receive(count=1, block=None)
    assert msg.id == "m1"
    # 7 of its 8 streams (4 queues and their retry streams) are empty: one script call
    # reads them in turn (it was a pipeline round trip per empty stream)
    assert _calls(client, "evalsha") == 1
    assert 1 <= _calls(client, "xreadgroup") <= 8


def test_an_expired_lease_seen_by_one_consumer_is_taken_by_another(client: Client) -> None:
    client.create_topic(TOPIC, queues=1)
    client.send_message(TOPIC, b"x")
    client.consumer(TOPIC, "g", visibility_timeout=60, name="stalled").receive(count=1)
    a = client.consumer(TOPIC, "g", visibility_timeout=0.2, name="a")
    b = client.consumer(TOPIC, "g", visibility_timeout=0.2, name="b")
    time.sleep(0.3)  # the stalled consumer's lease is older than a and b's timeout
    assert a.receive(count=1, block=None) == []  # a sees it expired (the first look)
    deadline = time.monotonic() + 10
    got: list = []
    while not got and time.monotonic() < deadline:
        got = b.receive(count=1, block=0.05)  # b's look is the second one: it takes it
    assert [m.body for m in got] == [b"x"]


@pytest.mark.parametrize(
    ("concurrency", "processes"), [(4, 1), (1, 1), (4, 2)], ids=["c4", "c1", "2-processes"]
)
def test_slow_jobs_are_not_handed_back_and_start_in_send_order(
    concurrency: int, processes: int
) -> None:
    jobs = 80 if concurrency > 1 else 20
    sc = SlowScenario("test", jobs, 0.1, concurrency, processes)
    figures = run_slow(sc)
    assert figures["reappended"] <= jobs * 0.05, figures
    # Each worker process also writes its heartbeat record a few times (start, beats,
    # stop): a handful per process, not per task.
    assert figures["writes_per_task"] <= 3.0 + 8 * processes / jobs, figures
    # The issue asks for N/4 at most; with the turn shared by every process in Redis the
    # worst is a few places (two processes with a turn each: 11-25 of 80).
    assert figures["worst_displacement"] <= jobs // 8, figures


def test_an_expired_lease_is_taken_over_only_after_a_second_look(client: Client) -> None:
    """After a broker stalls every lease on it looks expired until its live holders renew
    it: a lease is taken only once seen expired for longer than a renewal interval."""
    import time

    client.create_topic(TOPIC, queues=1)
    client.send_message(TOPIC, b"x")
    holder = client.consumer(TOPIC, "g", visibility_timeout=1)
    [held] = holder.receive(count=1, block=None)
    time.sleep(1.2)  # expired: its holder did not renew it
    taker = client.consumer(TOPIC, "g", visibility_timeout=1)
    assert taker.receive(count=1, block=None) == []  # first seen expired: not yet
    time.sleep(1.0)  # past a renewal interval (1/3 s) and the margin
    assert [m.entry_id for m in taker.receive(count=1, block=None)] == [held.entry_id]


def test_idle_consumers_wait_their_whole_block_but_one(client: Client) -> None:
    """Of a client's idle consumers of one group, one wakes for the looks for due messages
    (every 250 ms); the others wait their whole block, one call each (an idle worker at
    --concurrency 200 made 8,500 Redis calls a second, each thread waking every 250 ms)."""
    client.create_topic(TOPIC, queues=4)
    consumers = [client.consumer(TOPIC, "g") for _ in range(20)]
    for c in consumers:
        c.receive(count=1, block=None)  # set-up and first looks, outside the count
    end = time.monotonic() + 2.0
    calls: Counter[str] = Counter()
    errors: list[BaseException] = []

    def idle(consumer) -> None:
        try:
            while time.monotonic() < end:
                assert consumer.receive(count=1, block=1.0) == []
                calls[consumer.name] += 1
        except BaseException as exc:  # noqa: BLE001 - a thread's failure fails the test
            errors.append(exc)

    with round_trips() as trips:
        threads = [threading.Thread(target=idle, args=(c,)) for c in consumers]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == []
    assert all(calls[c.name] >= 2 for c in consumers), calls  # 2 s of waits of 1 s or less
    blocking = [t for t in trips if b"\r\nBLOCK\r\n" in t]
    # (a blocking read's round trip carries the `woken` script behind it: not a call apart)
    scripts = [t for t in trips if b"\r\nEVALSHA\r\n" in t and b"\r\nBLOCK\r\n" not in t]
    assert len(blocking) >= 19 * 2, len(blocking)
    # 19 consumers x 2-3 blocks of 1 s, and the watcher's ~8 blocks of 250 ms (each thread
    # woke every 250 ms before: ~160 blocking reads, and a read script call before each);
    # one read script call each, the first (after a wait that found nothing, they wait again)
    assert len(blocking) <= 19 * 3 + 12, len(blocking)
    assert len(scripts) <= 20 + 5, len(scripts)


def test_a_delayed_message_is_moved_in_time_while_every_consumer_waits(client: Client) -> None:
    client.create_topic(TOPIC, queues=4)
    consumers = [client.consumer(TOPIC, "g") for _ in range(5)]
    got: list = []

    def wait(consumer) -> None:
        end = time.monotonic() + 3.0
        while not got and time.monotonic() < end:
            got.extend(consumer.receive(count=1, block=1.0))

    threads = [threading.Thread(target=wait, args=(c,)) for c in consumers]
    for t in threads:
        t.start()
    time.sleep(0.3)  # every consumer is waiting
    client.send_message(TOPIC, b"later", delay=0.5)
    for t in threads:
        t.join()
    # one of them moved it into view (a consumer that only waited would never see it)
    assert [m.body for m in got] == [b"later"]


def _loop_with_jobs(client: Client, app, n: int):
    """A fetch loop (one thread's) of a task subscription on a one-queue topic, and `n`
    jobs sent to it."""
    from redismq.workers.worker import Loop

    @app.task(topic="one-by-one")
    def work(i):
        return i

    client.create_topic("one-by-one", queues=1)
    jobs = [work.send(i) for i in range(n)]
    consumer = client.consumer("one-by-one", "workers", create=True)
    return Loop(consumer, app.subscriptions[("one-by-one", "workers")], 1, []), jobs


def test_jobs_run_one_at_a_time_settle_in_the_next_reads_round_trip(client: Client, app) -> None:
    """Between one-at-a-time jobs a fetch thread makes one call to Redis: the settle of the
    job that finished and the read of the next go together (they were two round trips)."""
    from redismq.scripts import source

    loop, jobs = _loop_with_jobs(client, app, 3)
    stopping = threading.Event()
    loop.step(1.0, stopping)
    assert [j.status() for j in jobs] == ["running", "queued", "queued"]
    assert [m.id for m in loop.held()] == [jobs[0].id]  # finished, its lease kept until settled
    shas = {
        name: hashlib.sha1(source(name).encode()).hexdigest().encode()
        for name in ("settle", "read")
    }
    client.meta.script_load(source("settle"))  # a fresh server's first settle loads it
    with round_trips() as trips:
        loop.step(1.0, stopping)
    scripts = [t for t in trips if b"EVALSHA" in t.upper()]
    assert len(scripts) == 1 and shas["settle"] in scripts[0] and shas["read"] in scripts[0]
    assert [j.status() for j in jobs] == ["done", "running", "queued"]
    loop.step(1.0, stopping)
    assert loop.runner.flush().processed == 1  # what the last step finished, as a stop does
    assert [j.result(timeout=1) for j in jobs] == [0, 1, 2]
    assert loop.counts.processed == 2 and loop.held() == []


def test_the_slow_bench_counts_a_script_call_as_a_write_only_when_it_wrote(
    client: Client, url: str
) -> None:
    """The write count of `redismq bench`'s slow scenarios: a read-only `backlog` call (a
    --burst worker's idle threads make many) and a `read` that found nothing are no writes;
    a `read` that delivered and a `settle` are one each."""
    from redismq.cli.bench_slow import WriteCounter

    client.create_topic("counted", queues=1)
    consumer = client.consumer("counted", "g", create=True)
    consumer.backlog(), consumer.receive(count=1, block=None)  # their scripts loaded
    counter = WriteCounter(url)
    try:
        consumer.backlog()
        consumer.receive(count=1, block=None)
        client.send_message("counted", b"x")
        [msg] = consumer.receive(count=1, block=None)
        consumer.ack(msg)
    finally:
        writes = counter.stop()
    assert dict(counter.by_command) == {"evalsha send": 1, "evalsha read": 1, "evalsha settle": 1}
    assert writes == 3


def test_a_settled_job_is_no_longer_held_while_the_next_read_waits(client: Client, app) -> None:
    """The settle goes with the next receive; once it ran, the job's lease is not renewed
    any more, even while that receive still waits for work (a renewal of an acknowledged
    entry reports its lease lost: a false `lease lost` line)."""
    loop, [job] = _loop_with_jobs(client, app, 1)
    stopping = threading.Event()
    loop.step(1.0, stopping)
    assert [m.id for m in loop.held()] == [job.id]
    waiting = threading.Thread(target=loop.step, args=(3.0, stopping))
    waiting.start()
    try:
        assert wait_for(lambda: job.status() == "done", timeout=2)
        assert waiting.is_alive() and loop.held() == []
        assert loop.counts.processed == 1
    finally:
        client.send_message("one-by-one", b"wake")  # ends the wait (a bad entry: dead-lettered)
        waiting.join(5)


def test_a_read_is_kept_when_the_settle_that_went_with_it_fails(
    client: Client, monkeypatch
) -> None:
    """The settle of the last batch goes in the read's round trip: when it fails, what the
    read brought is this consumer's and stays in hand (kept, its lease renewed) for the
    next receive; it was dropped, to come back only when its lease expired."""
    client.create_topic("kept", queues=1)
    consumer = client.consumer("kept", "g", create=True)
    client.send_message("kept", b"1")
    [first] = consumer.receive(count=1, block=None)
    client.send_message("kept", b"2")
    scripts = consumer.queues[0].broker.scripts
    real = scripts.run

    def settles_refused(calls, raise_on_error=True, on=None):
        """The settle calls fail (as a refused write would), unrun; the others run."""
        ran = iter(real([c for c in calls if c[0] != "settle"], raise_on_error=False, on=on))
        replies = [redis.ResponseError("refused") if c[0] == "settle" else next(ran) for c in calls]
        if raise_on_error and any(isinstance(r, Exception) for r in replies):
            raise next(r for r in replies if isinstance(r, Exception))
        return replies

    monkeypatch.setattr(scripts, "run", settles_refused)
    with pytest.raises(redis.ResponseError, match="refused"):
        consumer.receive(count=1, block=None, settle=consumer.settling([first]))
    assert [m.body for m in consumer.kept()] == [b"2"]
    monkeypatch.setattr(scripts, "run", real)
    settle = consumer.settling([first])
    assert [m.body for m in consumer.receive(count=1, block=None, settle=settle)] == [b"2"]
    assert settle.settled.completed == 1 and settle.calls == {}


def test_an_ordered_worker_gives_its_queue_back_once_its_jobs_settled(client: Client, app) -> None:
    """An ordered consumer gives a queue back only when every message it fetched from it
    is settled: the settles that went with the receives must count too (they did not, and
    a stopping worker left every ordered queue to lapse after the visibility timeout)."""
    from redismq.workers.worker import Loop

    @app.consumer("orders-kept", group="ledger", ordered=True)
    def handle(msg):
        return None

    client.create_topic("orders-kept", queues=1)
    for i in range(3):
        client.send_message("orders-kept", str(i).encode(), key="k")
    consumer = client.consumer("orders-kept", "ledger", ordered=True, visibility_timeout=30)
    consumer.rebalance()
    loop = Loop(consumer, app.subscriptions[("orders-kept", "ledger")], 1, [])
    stopping = threading.Event()
    for _ in range(4):
        loop.step(0.2, stopping)
    loop.counts.add(loop.runner.flush())
    assert loop.counts.processed == 3
    consumer.close()
    other = client.consumer("orders-kept", "ledger", ordered=True, visibility_timeout=30)
    other.rebalance()
    assert other.leased == {0}  # given back, not left to lapse


def test_a_job_whose_settle_is_on_its_way_is_not_renewed(client: Client, app, monkeypatch) -> None:
    """A lease renewal that crosses the settle would find the entry acknowledged and report
    its lease lost: while the settle is on its way, the job is not among what is held."""
    loop, [job] = _loop_with_jobs(client, app, 1)
    loop.step(1.0, threading.Event())
    assert [m.id for m in loop.held()] == [job.id]
    scripts = loop.consumer.queues[0].broker.scripts
    real, seen = scripts.run, []

    def run(calls, raise_on_error=True, on=None):
        if any(c[0] == "settle" for c in calls):
            seen.append([m.id for m in loop.held()])
        return real(calls, raise_on_error, on)

    monkeypatch.setattr(scripts, "run", run)
    loop.step(0.1, threading.Event())
    assert seen == [[]] and job.status() == "done"


def test_the_read_keys_a_consumer_keeps_made_stay_few(client: Client) -> None:
    """A consumer makes the read script's keys once per set of streams; an ordered one's
    set changes with the queues it leases, so that a long-lived one with many queues
    changing hands would keep one list of keys per set it ever read (about 5 KB each)."""
    from itertools import combinations

    from redismq.fetching import READ_KEY_SETS

    client.create_topic("keysets", queues=8)
    consumer = client.consumer("keysets", "g", create=True)
    streams = [q.keys.stream for q in consumer.queues.values()]
    sets = [list(s) for s in combinations(streams, 4)]  # 70 sets
    for chosen in sets:
        keys = consumer._read_keys(chosen)
        assert keys[1:5] == chosen and consumer._read_keys(chosen) is keys
    assert len(consumer._read_keys_of) <= READ_KEY_SETS


@pytest.mark.parametrize("ordered", [False, True])
def test_a_kept_message_taken_over_meanwhile_is_not_run_here_again(
    client: Client, ordered: bool
) -> None:
    """A runner whose broker was lost mid-batch keeps what did not finish for the next
    receive. When that outage outlasted the lease and another consumer took the message
    over (the lease keeper learns it: `lease_lost`), the next receive served it all the
    same, as if received again: the job ran here and there at once."""
    client.create_topic("kept", queues=1)
    client.send("kept", {"n": 1})
    mine = client.consumer("kept", "g", name="a", visibility_timeout=0.3, ordered=ordered)
    other = client.consumer("kept", "g", name="b", visibility_timeout=0.3, ordered=ordered)
    if ordered:
        mine.rebalance()
    [msg] = mine.receive(count=1, block=1)
    mine.keep([msg])  # the broker was lost before it ran
    if ordered:  # its queue lease lapsed and went to the other
        time.sleep(0.5)
        other.rebalance()
    taken: list = []
    deadline = time.monotonic() + 15
    while not taken and time.monotonic() < deadline:
        taken += other.receive(count=1, block=0.2)
    assert [m.id for m in taken] == [msg.id]
    mine.lease_lost(mine.renew([msg]))  # what the lease keeper learns, and tells
    assert mine.is_lost(msg)
    assert mine.receive(count=1, block=0.2) == []
    assert mine.is_lost(msg)
