"""The worker runtime with real processes: pool, threads, async, time limits, progress."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import time

import pytest

from tests.apps import runtime_app
from tests.conftest import code_after_sigterm, fill_pipe, unread_pipe, wait_for


@pytest.fixture
def db(tmp_path, monkeypatch):
    path = str(tmp_path / "runs.db")
    monkeypatch.setenv("REDISMQ_TEST_DB", path)
    runtime_app.record("init", "")
    return path


@pytest.fixture
def rt(client, db):
    """The runtime app bound to this test's client."""
    runtime_app.app.connect(client)
    yield runtime_app
    runtime_app.app.connect(None)


def rows(db: str, kind: str) -> list[tuple[str, int]]:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT value, pid FROM runs WHERE kind = ?", (kind,)).fetchall()


def start_worker(processes, url, *args, **kwargs):
    return processes.start(
        "worker",
        "tests.apps.runtime_app:app",
        "--url",
        url,
        "--log-level",
        "WARNING",
        *args,
        **kwargs,
    )


def test_pool_runs_sync_and_async_handlers_in_one_app(rt, url, db, processes):
    jobs = [rt.sync_job.send(i) for i in range(50)] + [rt.async_job.send(i) for i in range(50)]
    worker = start_worker(processes, url, "--processes", "2", "--concurrency", "4", "--burst")
    assert worker.wait(60) == 0, worker.stdout.read()
    assert [j.result(timeout=1) for j in jobs] == [i * 2 for i in range(50)] + [
        i * 3 for i in range(50)
    ]
    assert len(rows(db, "sync")) == 50 and len(rows(db, "async")) == 50


def restarted_since(client, moment: float) -> bool:
    from redismq.status import live_workers

    return any(w["started"] > moment for w in live_workers(client))


def test_sync_job_over_its_time_limit_is_stopped_and_one_process_keeps_serving(
    rt, client, url, db, processes
):
    stuck = rt.forever.send()
    after = [rt.slow.send(0.5, str(i)) for i in range(3)]
    worker = start_worker(processes, url, "--processes", "1", "--concurrency", "2")
    assert stuck.status() in ("queued", "running")
    with pytest.raises(Exception, match="TimeLimitExceeded"):
        stuck.result(timeout=20)
    failed_at = time.time()
    assert wait_for(lambda: restarted_since(client, failed_at), timeout=30)
    later = rt.sync_job.send(7)
    assert later.result(timeout=30) == 14  # the worker still serves
    assert [j.result(timeout=30) for j in after] == ["0", "1", "2"]
    assert len(rows(db, "forever-start")) == 1
    starts = [v for v, _ in rows(db, "slow-start")]
    assert sorted(starts) == ["0", "1", "2"]  # the other jobs of that process ran once
    assert worker.poll() is None
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(30) == 0


def test_one_process_restarts_in_place_though_nobody_reads_its_log(rt, client, url, db, processes):
    """`--processes 1` leaves a stuck job behind by exec'ing itself; with its log a full pipe,
    the flush before the exec waited for good (the worker served nothing more)."""
    stuck = rt.forever.send()
    with unread_pipe() as log:
        worker = start_worker(processes, url, "--processes", "1", "--concurrency", "2", stdout=log)
        assert wait_for(lambda: rows(db, "forever-start"), timeout=20)
        fill_pipe(log)
        with pytest.raises(Exception, match="TimeLimitExceeded"):
            stuck.result(timeout=20)
        failed_at = time.time()
        assert wait_for(lambda: restarted_since(client, failed_at), timeout=30)
        assert rt.sync_job.send(7).result(timeout=30) == 14
        assert worker.poll() is None


def test_supervisor_replaces_the_process_of_a_stuck_job(rt, url, db, processes):
    stuck = rt.forever.send()
    worker = start_worker(processes, url, "--processes", "2", "--concurrency", "2")
    with pytest.raises(Exception, match="TimeLimitExceeded"):
        stuck.result(timeout=20)
    [(_, stuck_pid)] = rows(db, "forever-start")
    assert wait_for(lambda: not pid_alive(stuck_pid), timeout=10)
    later = rt.sync_job.send(21)
    assert later.result(timeout=20) == 42
    assert worker.poll() is None
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(30) == 0


def test_async_job_over_its_time_limit_is_cancelled(rt, url, db, processes):
    job = rt.async_forever.send()
    other = rt.async_job.send(1)
    worker = start_worker(processes, url, "--processes", "1", "--concurrency", "2")
    with pytest.raises(Exception, match="TimeLimitExceeded"):
        job.result(timeout=20)
    assert other.result(timeout=20) == 3
    assert worker.poll() is None  # cancelling an async job does not cost the process
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(30) == 0


def test_progress_is_readable_while_the_job_runs(rt, url, db, processes):
    job = rt.slow.send(1.5, "p")
    start_worker(processes, url, "--processes", "1")
    assert wait_for(lambda: job.progress() is not None, timeout=20)
    fraction, text = job.progress()
    assert 0 < fraction <= 1 and text.startswith("step")
    assert job.result(timeout=20) == "p"
    assert job.progress() == (1.0, "step 15")


def test_sigkilled_child_is_restarted_and_every_job_completes_once(rt, client, url, db, processes):
    jobs = [rt.slow.send(0.05, str(i)) for i in range(60)]
    worker = start_worker(
        processes, url, "--processes", "2", "--concurrency", "2", "--visibility-timeout", "1"
    )
    assert wait_for(lambda: len(rows(db, "slow-end")) >= 10, timeout=30)
    victim = rows(db, "slow-start")[-1][1]
    killed_at = time.time()
    os.kill(victim, signal.SIGKILL)
    assert wait_for(lambda: restarted_since(client, killed_at), timeout=30)  # a new child
    assert all(j.result(timeout=60) == str(i) for i, j in enumerate(jobs))
    ends = [v for v, _ in rows(db, "slow-end")]
    assert sorted(set(ends)) == sorted(str(i) for i in range(60))
    assert len(ends) - 60 <= 4  # at most what the killed process held could run twice
    assert worker.poll() is None
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(30) == 0


@pytest.mark.parametrize("processes_flag", ["1", "2"])
def test_a_worker_process_keeps_its_start_up_objects_out_of_garbage_collection(
    rt, url, db, processes, processes_flag
):
    # A full collection walked every object the worker imported (10-20 ms with the CLI's
    # libraries loaded): every thread stood still meanwhile, and a job's start with it.
    job = rt.frozen_objects.send()
    worker = start_worker(processes, url, "--processes", processes_flag, "--burst")
    assert worker.wait(60) == 0, worker.stdout.read()
    assert job.result(timeout=5) > 10_000


def test_sigkilled_parent_takes_its_children_with_it(rt, url, db, processes):
    job = rt.slow.send(0.5, "x")
    worker = start_worker(processes, url, "--processes", "2")
    assert wait_for(lambda: rows(db, "slow-start"), timeout=20)
    children = {pid for _, pid in rows(db, "slow-start")}
    worker.send_signal(signal.SIGKILL)
    worker.wait(10)
    assert wait_for(lambda: not any(pid_alive(p) for p in children), timeout=15)
    start_worker(processes, url, "--processes", "1", "--burst").wait(60)
    assert job.result(timeout=30) == "x"


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_periodic_task_is_sent_once_per_tick_across_three_workers(rt, url, db, processes):
    workers = [
        start_worker(processes, url, "--processes", "1", "--topic", "rt-periodic") for _ in range(3)
    ]
    assert wait_for(lambda: len(rows(db, "tick")) >= 4, timeout=30)
    for w in workers:
        w.send_signal(signal.SIGTERM)
    assert all(w.wait(30) == 0 for w in workers)
    ticks = [float(v) for v, _ in rows(db, "tick")]
    assert len(ticks) == len(set(ticks))  # one run per tick
    assert all(b - a == 1.0 for a, b in zip(sorted(ticks), sorted(ticks)[1:], strict=False))


def test_cancelled_queued_job_never_runs(rt, url, db, processes):
    job = rt.slow.send_with_options(args=(0.01, "never"), delay=1.0)
    assert job.cancel() is True
    assert job.status() == "cancelled"
    after = rt.sync_job.send_with_options(args=(1,), delay=1.2)
    start_worker(processes, url, "--processes", "1", "--burst").wait(30)
    assert after.result(timeout=10) == 2
    assert rows(db, "slow-start") == []
    with pytest.raises(Exception, match="cancelled"):
        job.result(timeout=1)
    assert job.cancel() is False  # finished jobs cannot be cancelled again


def test_cancelled_running_sync_job_is_stopped_and_one_process_keeps_serving(
    rt, client, url, db, processes
):
    job = rt.slow.send(30, "long")
    worker = start_worker(processes, url, "--processes", "1")
    assert wait_for(lambda: rows(db, "slow-start"), timeout=20)
    cancelled_at = time.time()
    assert job.cancel() is True
    assert wait_for(lambda: restarted_since(client, cancelled_at), timeout=30)
    assert job.status() == "cancelled"
    later = rt.sync_job.send(4)
    assert later.result(timeout=30) == 8  # a sync job is stopped with its process, replaced
    assert worker.poll() is None
    assert rows(db, "slow-end") == []
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(30) == 0


def test_cancelled_running_async_job_is_cancelled_in_place(rt, url, db, processes):
    job = rt.async_sleep.send(60)
    worker = start_worker(processes, url, "--processes", "1")
    assert wait_for(lambda: rows(db, "async-sleep-start"), timeout=20)
    assert job.cancel() is True
    later = rt.async_job.send(5)
    assert later.result(timeout=20) == 15
    assert worker.poll() is None
    assert job.status() == "cancelled"
    assert rows(db, "async-sleep-end") == []
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(30) == 0


def test_sigterm_lets_running_jobs_finish_and_hands_the_rest_over_at_once(rt, url, db, processes):
    jobs = [rt.slow.send(1.0, str(i)) for i in range(220)]
    first = start_worker(processes, url, "--processes", "1", "--concurrency", "20")
    assert wait_for(lambda: len(rows(db, "slow-start")) >= 20, timeout=30)
    first.send_signal(signal.SIGTERM)
    assert first.wait(30) == 0
    started_by_first = {v for v, _ in rows(db, "slow-start")}
    assert started_by_first <= {v for v, _ in rows(db, "slow-end")}  # running ones finished
    handed_over = time.monotonic()
    second = start_worker(processes, url, "--processes", "1", "--concurrency", "50")
    assert wait_for(lambda: len(rows(db, "slow-start")) > len(started_by_first), timeout=30)
    takeover = time.monotonic() - handed_over
    print(f"second worker started new jobs {takeover:.2f}s after the first exited")
    assert all(j.result(timeout=60) == str(i) for i, j in enumerate(jobs))
    starts = [v for v, _ in rows(db, "slow-start")]
    assert sorted(starts) == sorted(str(i) for i in range(220))  # none lost, none run twice
    second.send_signal(signal.SIGTERM)
    assert second.wait(30) == 0


@pytest.mark.slow
def test_long_job_with_short_visibility_timeout_is_never_run_twice(rt, url, db, processes):
    # The job outlives six visibility timeouts while a second worker waits for its message.
    job = rt.slow.send(9, "long")
    workers = [
        start_worker(processes, url, "--processes", "1", "--visibility-timeout", "1.5")
        for _ in range(2)
    ]
    assert job.result(timeout=60) == "long"
    assert [v for v, _ in rows(db, "slow-start")] == ["long"]
    for w in workers:
        w.send_signal(signal.SIGTERM)
        assert w.wait(30) == 0


@pytest.mark.fault  # kills a worker on purpose
def test_worker_that_stops_beating_leaves_status_within_three_beats(rt, client, url, db, processes):
    from redismq.status import BEAT_EVERY, MISSED_BEATS, live_workers

    worker = start_worker(processes, url, "--processes", "1")
    assert wait_for(lambda: len(live_workers(client)) == 1, timeout=20)
    [record] = live_workers(client)
    assert record["pid"] == worker.pid and record["topics"] == ["rt", "rt-async", "rt-periodic"]
    worker.send_signal(signal.SIGKILL)
    worker.wait(10)
    assert wait_for(lambda: live_workers(client) == [], timeout=BEAT_EVERY * MISSED_BEATS + 2)


def test_running_worker_consumes_queues_added_by_topic_expand(rt, client, url, db, processes):
    from redismq.brokers import expand_topic
    from redismq.routing import queue_for_key

    rt.sync_job.send(0)
    worker = start_worker(processes, url, "--processes", "1")
    assert wait_for(lambda: len(rows(db, "sync")) == 1, timeout=20)
    expand_topic(client, "rt", 6)
    keys = [k for k in (f"key-{i}" for i in range(100)) if queue_for_key(k, 6) >= 4][:5]
    jobs = [rt.sync_job.send_with_options(args=(i,), key=k) for i, k in enumerate(keys)]
    assert {j.queue for j in jobs} <= {4, 5}
    assert [j.result(timeout=30) for j in jobs] == [i * 2 for i in range(len(keys))]
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(30) == 0


def kill_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signum)


def signal_worker(worker, how: str, signum: int = signal.SIGTERM) -> None:
    """Signal a worker started in its own session: its supervisor only (`kill -TERM PID`) or
    every process of its group (`kill -TERM -PGID`, systemd's KillMode=control-group)."""
    if how == "group":
        kill_group(worker.pid, signum)
    else:
        worker.send_signal(signum)


@pytest.mark.parametrize("how", ["supervisor", "group"])
def test_sigterm_stays_graceful_whether_sent_to_the_supervisor_or_its_group(
    rt, url, db, processes, how
):
    jobs = [rt.slow.send(2.0, str(i)) for i in range(6)]
    worker = start_worker(
        processes, url, "--processes", "2", "--concurrency", "2", start_new_session=True
    )
    try:
        assert wait_for(lambda: len(rows(db, "slow-start")) >= 2, timeout=30)
        signal_worker(worker, how)
        assert worker.wait(30) == 0
        out = worker.stdout.read()
        assert "second signal" not in out, out
        started = [v for v, _ in rows(db, "slow-start")]
        assert sorted(started) == sorted(v for v, _ in rows(db, "slow-end")), out
        start_worker(processes, url, "--processes", "1", "--burst").wait(60)
        assert all(j.result(timeout=30) == str(i) for i, j in enumerate(jobs))
        starts = [v for v, _ in rows(db, "slow-start")]
        assert sorted(starts) == [str(i) for i in range(6)]  # nothing ran twice
    finally:
        kill_group(worker.pid, signal.SIGKILL)


@pytest.mark.parametrize("how", ["supervisor", "group"])
def test_a_second_sigterm_forces_the_exit(rt, client, url, db, processes, how):
    rt.slow.send(60.0, "long")
    worker = start_worker(processes, url, "--processes", "2", start_new_session=True)
    try:
        assert wait_for(lambda: rows(db, "slow-start"), timeout=30)
        signal_worker(worker, how)
        time.sleep(0.5)
        signal_worker(worker, how)
        assert worker.wait(20) == 1
        assert rows(db, "slow-end") == []
        # What the killed children ran is free for other workers at once, not after the
        # visibility timeout.
        other = client.consumer("rt", "workers", visibility_timeout=30)
        assert [m.body["args"] for m in other.receive(count=10, block=None)] == [[60.0, "long"]]
        other.close()
    finally:
        kill_group(worker.pid, signal.SIGKILL)


def test_messages_of_a_killed_child_run_again_well_before_the_visibility_timeout(
    rt, url, db, processes
):
    jobs = {tag: rt.slow_retried.send(3.0, tag) for tag in ("a", "b")}
    worker = start_worker(
        processes,
        url,
        "--processes",
        "2",
        "--concurrency",
        "1",
        "--visibility-timeout",
        "30",
        start_new_session=True,
    )
    try:
        assert wait_for(lambda: len(rows(db, "slow-start")) == 2, timeout=30)
        [(victim_tag, victim)] = rows(db, "slow-start")[:1]
        killed = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        assert jobs[victim_tag].result(timeout=25) == victim_tag
        took = time.monotonic() - killed
        print(f"the killed child's message finished {took:.1f}s after the kill")
        assert took < 15  # the visibility timeout is 30 s
        assert all(j.result(timeout=20) == tag for tag, j in jobs.items())
        starts = sorted(v for v, _ in rows(db, "slow-start"))
        assert starts == sorted(["a", "b", victim_tag])  # the killed run, then one more
        assert sorted(v for v, _ in rows(db, "slow-end")) == ["a", "b"]
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 0
    finally:
        kill_group(worker.pid, signal.SIGKILL)


def test_a_stop_signal_that_comes_while_the_pool_starts_reaches_every_child(monkeypatch):
    """SIGTERM while the supervisor starts its processes (each spawn takes a moment): the
    handler told the children started so far to stop, the loop went on starting the rest,
    and those, never told, ran and took jobs until the grace period's SIGKILL. No real
    processes: a fake one lets the signal come exactly while the second one starts."""
    from types import SimpleNamespace

    from redismq.workers import supervisor as sup

    pool = sup.Supervisor(sup.WorkerOptions(app="tests.apps.runtime_app:app"), processes=3)
    handlers: dict[int, object] = {}
    monkeypatch.setattr(sup.signal, "signal", lambda signum, fn: handlers.setdefault(signum, fn))
    signalled: list[tuple[int, int]] = []
    monkeypatch.setattr(sup.os, "kill", lambda pid, signum: signalled.append((pid, signum)))
    started: list[int] = []

    class Child:
        exitcode = None

        def __init__(self, **kwargs: object) -> None:
            self.pid = 1000 + len(started)

        def start(self) -> None:
            started.append(self.pid)
            if len(started) == 2:  # SIGTERM arrives while the second process starts
                handlers[signal.SIGTERM](signal.SIGTERM, None)

    pool._context = SimpleNamespace(Process=Child)
    pool._install_signal_handlers()
    pool._start_all()
    assert started == [1000, 1001]  # no third one
    assert sorted(signalled) == [(1000, sup.STOP_SIGNAL), (1001, sup.STOP_SIGNAL)]


@pytest.mark.parametrize("pool", ["1", "2"], ids=["in-process", "supervised"])
def test_a_worker_exits_though_a_job_over_its_time_limit_left_a_thread_running(
    rt, url, db, processes, pool
):
    """Python's exit waits for every thread of an executor (asyncio.to_thread's too): the
    thread a cancelled job left would keep the stopped worker process alive for good."""
    job = rt.leaves_a_thread.send()
    worker = start_worker(processes, url, "--processes", pool, "--concurrency", "2")
    with pytest.raises(Exception, match="TimeLimitExceeded"):
        job.result(timeout=30)
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(30) == 0


@pytest.mark.parametrize("pool", ["1", "2"], ids=["in-process", "supervised"])
def test_a_worker_exits_though_nobody_reads_its_log(rt, url, db, processes, pool):
    """A worker whose log output nobody reads (a full pipe: every write blocks) still exits
    once stopped, and so does its supervisor, which writes its own stop lines into the same
    pipe."""
    jobs = [rt.sync_job.send(n) for n in range(3000)]  # a done line each: past 64 KiB
    with unread_pipe() as log:
        worker = start_worker(
            processes, url, "--processes", pool, "--log-level", "INFO", "--grace", "2", stdout=log
        )
        assert jobs[0].result(timeout=30) == 0
        time.sleep(3)  # the lines that fill the pipe, and the worker's writes that wait on it
        fill_pipe(log)
        code = code_after_sigterm(worker, 40)
    assert code == 0
