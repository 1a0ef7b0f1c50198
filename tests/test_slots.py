"""A topic whose tasks are coroutines, at --concurrency N: one fetch thread fills the N
slots and the jobs run side by side on one event loop (workers/slots.py), with leases,
time limits, cancels, context and a graceful stop as for one thread per slot."""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time

from conftest import wait_for

from redismq import App, BrokerUnavailable, Client, current_job
from redismq.hooks import Hooks
from redismq.middleware import Middleware
from redismq.status import topic_status
from redismq.workers.slots import ConcurrentLoop
from redismq.workers.worker import Worker

TOPIC = "slots"


def script_calls(client: Client) -> int:
    stats = client.meta.info("commandstats")
    return sum(stats.get(f"cmdstat_{c}", {}).get("calls", 0) for c in ("evalsha", "eval"))


def run_in_thread(worker: Worker) -> threading.Thread:
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    return thread


def test_an_async_topics_jobs_share_one_loop_and_a_wave_settles_in_few_calls(
    client: Client, app: App
) -> None:
    """Before: one thread and one event loop per slot, each reading and settling its own
    job (two script calls per job at least). Now one loop, a few calls per wave."""
    client.create_topic(TOPIC, 2)
    loops: list[int] = []

    @app.task(topic=TOPIC, name="wave")
    async def wave(i: int) -> int:
        loops.append(id(asyncio.get_running_loop()))
        await asyncio.sleep(0.2)
        return i

    jobs = [wave.send(i) for i in range(60)]
    worker = Worker(app, concurrency=20, burst=True)
    assert [type(loop) for loop in worker.loops] == [ConcurrentLoop]
    before = script_calls(client)
    counts = worker.run()
    calls = script_calls(client) - before
    assert counts.processed == 60 and counts.failed == 0
    assert [job.result(timeout=5) for job in jobs] == list(range(60))
    assert len(set(loops)) == 1 and len(loops) == 60
    assert calls < 60, f"{calls} script calls for 60 jobs"


def test_a_slow_async_job_keeps_its_lease_and_runs_once(client: Client, app: App) -> None:
    """Jobs of 2.5 s with a visibility timeout of 1 s: held while they run, renewed."""
    client.create_topic(TOPIC, 1)
    runs: list[int] = []

    @app.task(topic=TOPIC, name="long")
    async def long(i: int) -> None:
        runs.append(i)
        await asyncio.sleep(2.5)

    for i in range(4):
        long.send(i)
    worker = Worker(app, concurrency=4, burst=True, visibility_timeout=1.0)
    thread = run_in_thread(worker)
    assert wait_for(lambda: len(runs) == 4)
    # Another consumer of the group looks for expired leases all along: it finds none.
    other = client.consumer(TOPIC, worker.subscriptions[0].group, visibility_timeout=1.0)
    stolen: list = []
    while thread.is_alive():
        stolen += other.receive(count=10, block=0.1)
    assert stolen == [], "a running job's lease expired"
    assert sorted(runs) == [0, 1, 2, 3]
    assert worker.counts.processed == 4 and worker.counts.lost == 0


def test_an_async_job_over_its_limit_is_cancelled_and_its_neighbours_finish(
    client: Client, app: App
) -> None:
    client.create_topic(TOPIC, 1)

    @app.task(topic=TOPIC, name="forever", time_limit=0.3, max_retries=0)
    async def forever() -> None:
        await asyncio.sleep(60)

    @app.task(topic=TOPIC, name="quick")
    async def quick(i: int) -> int:
        await asyncio.sleep(0.5)
        return i

    stuck = forever.send()
    others = [quick.send(i) for i in range(3)]
    worker = Worker(app, concurrency=4, burst=True)
    counts = worker.run()
    assert counts.processed == 3 and counts.dead == 1 and not worker.replaced
    assert stuck.status() == "dead"
    assert [job.result(timeout=5) for job in others] == [0, 1, 2]


def test_a_coroutine_that_blocks_its_loop_past_its_limit_is_failed_and_replaces_the_process(
    client: Client, app: App
) -> None:
    """Its loop cannot cancel it: the watchdog gives it up (the fetch thread records the
    failure) and the worker stops to be replaced, as for a stuck sync job."""
    client.create_topic(TOPIC, 1)

    @app.task(topic=TOPIC, name="blocks", time_limit=0.2, max_retries=0)
    async def blocks() -> None:
        time.sleep(2.0)  # blocking code in a coroutine: the loop stands still

    job = blocks.send()
    worker = Worker(app, concurrency=2, burst=True)
    counts = worker.run()
    assert worker.replaced
    assert counts.dead == 1
    [dead] = client.dead_letters(TOPIC, worker.subscriptions[0].group)
    assert "event loop did not stop it" in dead.reason
    assert job.status() == "dead"


def test_a_running_async_job_is_cancelled_in_place(client: Client, app: App) -> None:
    client.create_topic(TOPIC, 1)
    started = threading.Event()

    @app.task(topic=TOPIC, name="waits")
    async def waits(i: int) -> int:
        if i == 0:
            started.set()
            await asyncio.sleep(30)
        return i

    victim = waits.send(0)
    other = waits.send(1)
    worker = Worker(app, concurrency=3, burst=True)
    thread = run_in_thread(worker)
    assert started.wait(10)
    assert victim.cancel() is True
    thread.join(15)
    assert not thread.is_alive()
    assert victim.status() == "cancelled" and other.result(timeout=5) == 1
    assert worker.counts.cancelled == 1 and not worker.replaced
    assert victim.describe()["attempts"] == 1  # the run it stopped (0 read as never run)


request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("rid", default=None)


class SetsRequestId(Middleware):
    def before_job(self, job) -> None:  # type: ignore[no-untyped-def]
        request_id.set(f"req-{job.id}")


def test_an_async_job_sees_its_job_and_what_middleware_set(client: Client) -> None:
    """current_job() and a context variable set by before_job reach the coroutine."""
    client.create_topic(TOPIC, 1)
    app = App(client, middleware=[SetsRequestId()])
    seen: dict[str, str | None] = {}

    @app.task(topic=TOPIC, name="ctx")
    async def ctx(i: int) -> None:
        await asyncio.sleep(0.05)
        seen[current_job().id] = request_id.get()

    jobs = [ctx.send(i) for i in range(5)]
    Worker(app, concurrency=5, burst=True).run()
    assert seen == {job.id: f"req-{job.id}" for job in jobs}


def test_a_stop_lets_running_async_jobs_finish_and_settles_them(client: Client, app: App) -> None:
    client.create_topic(TOPIC, 1)
    started: list[int] = []

    @app.task(topic=TOPIC, name="half")
    async def half(i: int) -> int:
        started.append(i)
        await asyncio.sleep(0.5)
        return i

    jobs = [half.send(i) for i in range(10)]
    worker = Worker(app, concurrency=4)
    thread = run_in_thread(worker)
    deadline = time.monotonic() + 10
    while len(started) < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    worker.stop()
    thread.join(15)
    assert not thread.is_alive()
    ran = sorted(started)
    assert worker.counts.processed == len(ran) >= 4
    assert [jobs[i].result(timeout=1) for i in ran] == ran
    group = worker.subscriptions[0].group
    [row] = [g for g in topic_status(client, TOPIC)["groups"] if g["name"] == group]
    assert row["pending"] == 0, "what ran is settled, what did not is handed back"
    assert row["lag"] == 10 - len(ran)


def test_jobs_that_ended_beside_a_failure_whose_retry_hit_an_outage_are_settled(
    client: Client, app: App
) -> None:
    """A failure's retry raised BrokerUnavailable while the fetch thread recorded a wave:
    the jobs recorded after it were dropped from the worker's hands (never settled, no
    longer renewed) until a fix kept them for the next try."""
    client.create_topic(TOPIC, 1)

    @app.task(topic=TOPIC, name="wave_fails", max_retries=0)
    async def wave_fails(i: int) -> int:
        await asyncio.sleep(0.3)
        if i == 0:
            raise ValueError("the first one fails")
        return i

    jobs = [wave_fails.send(i) for i in range(4)]
    worker = Worker(app, concurrency=4)
    [loop] = worker.loops
    retry = loop.consumer.retry
    outages = [BrokerUnavailable("broker down (injected)")]

    def retry_after_an_outage(*args, **kwargs):  # type: ignore[no-untyped-def]
        if outages:
            raise outages.pop()
        return retry(*args, **kwargs)

    loop.consumer.retry = retry_after_an_outage  # type: ignore[method-assign]
    thread = run_in_thread(worker)
    try:
        assert wait_for(lambda: [job.status() for job in jobs] == ["dead"] + ["done"] * 3)
    finally:
        worker.stop()
        thread.join(15)
    assert not outages, "the outage was hit"
    assert worker.counts.processed == 3 and worker.counts.dead == 1


def test_a_stop_settles_what_ends_within_the_grace_though_a_job_outlasts_it(
    client: Client, app: App
) -> None:
    client.create_topic(TOPIC, 1)
    started: list[int] = []

    @app.task(topic=TOPIC, name="mixed_lengths")
    async def mixed_lengths(seconds: float) -> None:
        started.append(1)
        await asyncio.sleep(seconds)

    jobs = [mixed_lengths.send(s) for s in (5.0, 0.3, 0.3, 0.3)]
    worker = Worker(app, concurrency=4, grace=1.5)
    thread = run_in_thread(worker)
    assert wait_for(lambda: len(started) == 4)
    worker.stop()
    thread.join(15)
    assert [job.status() for job in jobs[1:]] == ["done"] * 3
    assert jobs[0].status() == "running", "left to its lease: it outlasted the grace"


def test_a_coroutine_that_raises_system_exit_fails_alone(client: Client, app: App) -> None:
    """SystemExit out of a task stopped the event loop that runs every slot's job."""
    client.create_topic(TOPIC, 1)

    @app.task(topic=TOPIC, name="exits", max_retries=0)
    async def exits(i: int) -> int:
        await asyncio.sleep(0.05 * i)
        if i == 0:
            raise SystemExit(3)
        return i

    jobs = [exits.send(i) for i in range(6)]
    counts = Worker(app, concurrency=3, burst=True).run()
    assert jobs[0].status() == "dead"
    assert [job.result(timeout=5) for job in jobs[1:]] == [1, 2, 3, 4, 5]
    assert counts.processed == 5


class TracesJobs(Middleware):
    """Sets a context variable in before_job and resets it in after_job, as a tracer
    does with its current span; records what each job's before_job found set."""

    def __init__(self) -> None:
        self.found: list[str | None] = []
        self.tokens: dict[str, contextvars.Token] = {}

    def before_job(self, job) -> None:  # type: ignore[no-untyped-def]
        self.found.append(request_id.get())
        self.tokens[job.id] = request_id.set(f"span-{job.id}")

    def after_job(self, job, result, error) -> None:  # type: ignore[no-untyped-def]
        request_id.reset(self.tokens.pop(job.id))


def test_one_jobs_middleware_context_does_not_leak_into_the_next(client: Client) -> None:
    """Before, every job's before_job ran in the fetch thread's one context: each job
    found the previous one's span as its parent (and a reset raised)."""
    client.create_topic(TOPIC, 1)
    tracer = TracesJobs()
    app = App(client, middleware=[tracer])

    @app.task(topic=TOPIC, name="traced")
    async def traced(i: int) -> None:
        await asyncio.sleep(0.1 * (4 - i))  # they end in the reverse order

    for i in range(4):
        traced.send(i)
    counts = Worker(app, concurrency=4, burst=True).run()
    assert counts.processed == 4
    assert tracer.found == [None] * 4 and tracer.tokens == {}


def test_a_coroutine_with_a_time_limit_that_raises_system_exit_fails_alone(
    client: Client, app: App
) -> None:
    """With a time limit the job runs in wait_for's inner task (Python 3.11), whose
    SystemExit left the loop's run_forever: the loop's thread died, every slot hung."""
    client.create_topic(TOPIC, 1)

    @app.task(topic=TOPIC, name="exits_limited", max_retries=0, time_limit=5.0)
    async def exits_limited(i: int) -> int:
        await asyncio.sleep(0.05 * i)
        if i == 0:
            raise SystemExit(3)
        return i

    jobs = [exits_limited.send(i) for i in range(6)]
    worker = Worker(app, concurrency=3, burst=True)
    thread = run_in_thread(worker)
    thread.join(20)
    assert not thread.is_alive(), "the worker hung"
    assert jobs[0].status() == "dead" and not worker.replaced
    assert [job.result(timeout=5) for job in jobs[1:]] == [1, 2, 3, 4, 5]


def test_a_job_given_up_while_its_loop_was_blocked_never_starts_after(
    client: Client, app: App
) -> None:
    """A coroutine blocks the loop; its neighbour, not started yet, passes its limit and
    is given up (failed, and retried elsewhere). Before, the neighbour still started once
    the loop ran again: a second run, with no lease expired."""
    client.create_topic(TOPIC, 1)
    runs: list[str] = []

    @app.task(topic=TOPIC, name="hogs", time_limit=10.0, max_retries=0)
    async def hogs() -> None:
        time.sleep(3.0)  # blocking code: the loop stands still

    @app.task(topic=TOPIC, name="neighbour", time_limit=0.3, max_retries=0)
    async def neighbour() -> None:
        runs.append("neighbour")
        await asyncio.sleep(0.1)

    hogs.send()
    late = neighbour.send()
    worker = Worker(app, concurrency=2, burst=True)
    worker.run()
    [loop] = worker.loops
    jobs_thread = loop.runner._thread  # the event loop's: it ends once the hog lets it
    assert jobs_thread is not None
    jobs_thread.join(10)
    assert not jobs_thread.is_alive()
    assert worker.replaced
    assert late.status() == "dead"
    assert runs == []


def test_a_hook_that_fails_on_one_outcome_leaves_the_others_recorded(
    client: Client, app: App
) -> None:
    """An after-hook raising for one job: before, that job and the rest were put back
    and tried again forever (the worker hung with every slot taken)."""
    client.create_topic(TOPIC, 1)

    class FailsOnce(Hooks):
        failed: list[str] = []

        def after_process(self, msg, task, outcome, duration, error, **kw) -> None:  # type: ignore[no-untyped-def]
            if msg.body["args"] == [0] and not self.failed:
                self.failed.append(msg.id)
                raise RuntimeError("a hook's bug")

    @app.task(topic=TOPIC, name="hooked")
    async def hooked(i: int) -> int:
        await asyncio.sleep(0.1)
        return i

    jobs = [hooked.send(i) for i in range(3)]
    worker = Worker(app, concurrency=3, burst=True, hooks=[FailsOnce()])
    thread = run_in_thread(worker)
    thread.join(20)
    assert not thread.is_alive(), "the worker hung"
    assert [job.result(timeout=5) for job in jobs] == [0, 1, 2]
    assert worker.counts.processed == 3 and worker.counts.duplicates == 0


def test_a_job_whose_outcome_is_being_recorded_is_still_held(client: Client, app: App) -> None:
    """While a failure's retry goes to Redis its message must stay in the worker's hands
    (its lease renewed); before, it was in no list until its retry returned."""
    client.create_topic(TOPIC, 1)

    @app.task(topic=TOPIC, name="fails", max_retries=0)
    async def fails() -> None:
        raise ValueError("no")

    job = fails.send()
    worker = Worker(app, concurrency=2, burst=True)
    [loop] = worker.loops
    held_during_retry: list[set[str]] = []
    retry = loop.consumer.retry

    def watched_retry(*args, **kwargs):  # type: ignore[no-untyped-def]
        held_during_retry.append({m.id for m in loop.held()})
        return retry(*args, **kwargs)

    loop.consumer.retry = watched_retry  # type: ignore[method-assign]
    worker.run()
    assert job.status() == "dead"
    assert held_during_retry == [{job.id}]
