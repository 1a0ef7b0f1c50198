"""Issue 13, item 1: the worker's one line per outcome, written without a `logging` record
(workers.logs.WorkerHandler): the same text and JSON as a record, every done job's line in
the output even when the worker is stopped by SIGTERM, failures with their traceback."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import signal
import threading
import time
from collections import Counter

import pytest

from redismq.workers.logs import WorkerHandler, whole_lines
from tests.conftest import wait_for

FIELDS = {"id": "0190f3c2a1b2", "task": "naps.nap", "attempt": 2, "duration": 1.2e-05}
TEXT = "id=0190f3c2a1b2 task=naps.nap attempt=2 duration=1.2e-05 outcome=done"


def test_a_batch_is_cut_into_whole_lines_of_at_most_pipe_buf_bytes():
    lines = [f"{i:03d}" + "x" * 20 + "\n" for i in range(100)]  # 24 bytes each
    chunks = list(whole_lines("".join(lines), 100))
    assert "".join(chunks) == "".join(lines)
    assert [len(c) for c in chunks] == [96] * 25  # four whole lines each
    # counted in bytes: 48 + 61 bytes do not fit in 100, though 48 + 31 characters do
    assert list(whole_lines("a" * 47 + "\n" + "é" * 30 + "\n", 100)) == [
        "a" * 47 + "\n",
        "é" * 30 + "\n",
    ]
    long = "z" * 300 + "\n"
    assert list(whole_lines("a\n" + long + "b\n", 100)) == ["a\n", long, "b\n"]  # alone


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_a_line_without_a_record_reads_as_the_record_would(monkeypatch, fmt):
    now = 1_790_000_000.25
    monkeypatch.setattr("redismq.workers.logs.time.time", lambda: now)
    handler = WorkerHandler(fmt)
    handler.setStream(io.StringIO())
    fields = {**FIELDS, "outcome": "done"}
    record = logging.makeLogRecord(
        {"name": "redismq.processing", "levelno": logging.INFO, "levelname": "INFO"}
    )
    record.msg, record.args, record.created, record.msecs = "%s%s", (TEXT, ""), now, 250.0
    record.__dict__.update(fields)
    handler.done("redismq.processing", "0190f3c2a1b2", "naps.nap", 2, 1.2e-05)
    handler.flush()
    assert handler.stream.getvalue() == handler.format(record) + "\n"
    handler.close()


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_lines_made_of_kept_parts_read_as_their_records_would(monkeypatch, fmt):
    """Lines of the same millisecond, logger, task and duration share parts the handler
    keeps: each still reads as its own record would (another moment, logger, id, task,
    attempt or duration)."""
    lines = [
        (1_790_000_000.25, "redismq.processing", "a1", "naps.nap", 1, 1.2e-05),
        (1_790_000_000.2504, "redismq.processing", "a2", "naps.nap", 1, 1.2e-05),
        (1_790_000_000.2504, "other.logger", "a3", "naps.nap", 1, 1.2e-05),
        (1_790_000_000.2514, "redismq.processing", "a4", "naps.nap", 2, 1.2e-05),
        (1_790_000_001.5, "redismq.processing", "a5", "naps.other", 1, 0.25),
        (1_790_000_001.5, "redismq.processing", "a6", "naps.nap", 1, 1.3e-05),
    ]
    handler = WorkerHandler(fmt)
    handler.setStream(io.StringIO())
    expected = []
    for now, logger, mid, task, attempt, took in lines:
        monkeypatch.setattr("redismq.workers.logs.time.time", lambda now=now: now)
        handler.done(logger, mid, task, attempt, took)
        fields = {"id": mid, "task": task, "attempt": attempt, "duration": took}
        text = f"id={mid} task={task} attempt={attempt} duration={took} outcome=done"
        record = logging.makeLogRecord({"name": logger, "levelno": 20, "levelname": "INFO"})
        record.msg, record.args, record.created = "%s%s", (text, ""), now
        record.msecs = int((now - int(now)) * 1000)
        record.__dict__.update({**fields, "outcome": "done"})
        expected.append(handler.format(record) + "\n")
    handler.flush()
    assert handler.stream.getvalue() == "".join(expected)
    handler.close()


def _record_text(handler: WorkerHandler, now: float, mid: str) -> str:
    """The text line a record of a done job made at `now` gives."""
    text = f"id={mid} task=t attempt=1 duration=0.1 outcome=done"
    record = logging.LogRecord("redismq.processing", logging.INFO, "", 0, "%s%s", (text, ""), None)
    record.created, record.msecs = now, int((now - int(now)) * 1000)
    return handler.format(record) + "\n"


@pytest.mark.parametrize("now", [1_790_000_020.2509999, 1_790_000_020.0009999])
def test_a_line_near_a_millisecond_boundary_reads_as_its_record_would(monkeypatch, now):
    monkeypatch.setattr("redismq.workers.logs.time.time", lambda: now)
    handler = WorkerHandler("text")
    handler.setStream(io.StringIO())
    handler.done("redismq.processing", "m1", "t", 1, 0.1)
    handler.flush()
    assert handler.stream.getvalue() == _record_text(handler, now, "m1")
    handler.close()


def test_a_late_thread_does_not_give_its_moment_to_the_lines_of_others(monkeypatch):
    """A thread that read the clock, then lost the GIL while it made its line's time stamp,
    leaves the lines other threads make meanwhile, and after, with their own moment."""
    late, now = 1_790_000_000.5, 1_790_000_001.302
    clock = [late]
    monkeypatch.setattr("redismq.workers.logs.time.time", lambda: clock[0])
    handler = WorkerHandler("text")
    handler.setStream(io.StringIO())
    stamp_of = handler._stamp_of
    switched = []

    def stamp_then_switch(second: int) -> str:
        if not switched:  # another thread runs here, at a later moment
            switched.append(True)
            clock[0] = now
            handler.done("redismq.processing", "other", "t", 1, 0.1)
        return stamp_of(second)

    monkeypatch.setattr(handler, "_stamp_of", stamp_then_switch)
    handler.done("redismq.processing", "late", "t", 1, 0.1)
    handler.done("redismq.processing", "after", "t", 1, 0.1)
    handler.flush()
    assert handler.stream.getvalue() == "".join(
        [_record_text(handler, now, "other"), _record_text(handler, late, "late")]
        + [_record_text(handler, now, "after")]
    )
    handler.close()


def test_lines_and_records_keep_their_order(monkeypatch):
    handler = WorkerHandler("text")
    handler.setStream(io.StringIO())
    handler.done("redismq.processing", "first", "t", 1, 0.1)
    handler.handle(logging.makeLogRecord({"msg": "second", "levelname": "WARNING"}))
    handler.done("redismq.processing", "third", "t", 1, 0.1)
    handler.close()  # flushes
    lines = handler.stream.getvalue().splitlines()
    assert [re.findall(r"id=(\w+)|(second)", line)[0] for line in lines] == [
        ("first", ""),
        ("", "second"),
        ("third", ""),
    ]


TEXT_DONE = (
    r"^\S+ \S+ INFO \d+ redismq.processing: id=(\S+) task=(\S+) attempt=(\d+) "
    r"duration=(\S+) outcome=done$"
)
STAMP = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} "


def _done_lines(output: str, fmt: str) -> list[dict]:
    if fmt == "json":
        records = [json.loads(x) for x in output.splitlines() if x.startswith("{")]
        return [r for r in records if r.get("outcome") == "done"]
    found = re.findall(TEXT_DONE, output, re.M)
    return [
        {"id": i, "task": t, "attempt": int(a), "duration": float(d), "outcome": "done"}
        for i, t, a, d in found
    ]


def _done_ids(client, topic: str) -> set[str]:
    keys = client.router.queue_keys(topic, 0)
    return {m.decode() for m in client.meta.zrange(keys.done("workers"), 0, -1)}


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_worker_writes_one_line_per_outcome_with_its_fields(client, url, processes, fmt):
    client.create_topic("naps", queues=1)
    ids = client.send_many("naps", [{"task": "naps.nap", "args": [0], "kwargs": {}}] * 30)
    failed = client.send("naps", {"task": "naps.fail", "args": [], "kwargs": {}})
    proc = processes.start(
        "worker", "tests.apps.loglines_app:app", "--url", url, "--burst", "--log-format", fmt
    )
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, output
    done = _done_lines(output, fmt)
    assert sorted(r["id"] for r in done) == sorted(ids)  # one line each
    for r in done:
        assert r["task"] == "naps.nap" and r["attempt"] == 1 and r["duration"] >= 0
    if fmt == "json":
        [dead] = [json.loads(x) for x in output.splitlines() if f'"id": "{failed}"' in x]
        assert dead["outcome"] == "dead" and dead["level"] == "WARNING"
        assert "KeyError: 'no such record'" in dead["exception"]
    else:
        after = output[output.index(f"id={failed} task=naps.fail") :]
        assert "outcome=dead error=" in after.splitlines()[0]
        assert "Traceback (most recent call last)" in after and "in fail" in after
        # each process says what it did; together, everything
        stops = re.findall(r"stopped: (\d+) done, (\d+) failed \((\d+) retried, (\d+) dead", output)
        assert [sum(int(s[i]) for s in stops) for i in range(4)] == [30, 1, 0, 1], output


def test_after_sigterm_every_finished_jobs_line_is_in_the_output(client, url, processes):
    client.create_topic("naps", queues=1)
    client.send_many("naps", [{"task": "naps.nap", "args": [0.01], "kwargs": {}}] * 2000)
    proc = processes.start("worker", "tests.apps.loglines_app:app", "--url", url)
    assert wait_for(lambda: len(_done_ids(client, "naps")) >= 100, timeout=60)
    os.kill(proc.pid, signal.SIGTERM)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, output[-2000:]
    finished = _done_ids(client, "naps")
    logged = {r["id"] for r in _done_lines(output, "text")}
    assert len(finished) < 2000  # stopped midway: lines were still being written
    assert finished <= logged, f"{len(finished - logged)} finished jobs have no line"
    # the stop is logged by the main loops (a signal handler logs nothing)
    pool = re.search(rf"signal {int(signal.SIGTERM)}: stopping (\d+) worker processes", output)
    assert pool, output[-2000:]
    # (a child still starting, on a loaded machine, is ended by the signal before it has
    # a handler for it: it held nothing, and says nothing)
    stops = output.count("stop requested by the supervisor: finishing running work")
    assert 1 <= stops <= int(pool.group(1))


def _stalled_on_its_output(client, url: str, processes, pool: str):
    """A worker of `pool` processes whose output pipe nobody reads, once that pipe is full
    and the worker waits to write (its count of finished jobs stopped for a second)."""
    client.create_topic("naps", queues=1)
    client.send_many("naps", [{"task": "naps.nap", "args": [0], "kwargs": {}}] * 4000)
    app = "tests.apps.loglines_app:app"
    proc = processes.start("worker", app, "--url", url, "--processes", pool)
    seen: list[int] = []

    def stalled() -> bool:
        seen.append(len(_done_ids(client, "naps")))
        return len(seen) > 10 and seen[-1] == seen[-11] > 0

    assert wait_for(stalled, timeout=60, every=0.1), proc.poll()
    return proc


def test_two_processes_lines_stay_whole_when_their_shared_pipe_is_full(client, url, processes):
    """The pool's processes write their batched lines to one pipe (their parent's stderr).
    A write of more than PIPE_BUF bytes to a full pipe goes in parts, which the kernel may
    interleave with the other process's: a slow reader (a log shipper) got broken lines."""
    proc = _stalled_on_its_output(client, url, processes, "2")
    os.kill(proc.pid, signal.SIGTERM)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, output[-2000:]
    finished = _done_ids(client, "naps")
    broken = [
        x
        for x in output.splitlines()
        if len(re.findall(STAMP, x)) != 1
        or ("redismq.processing" in x and not re.fullmatch(TEXT_DONE, x))
    ]
    assert not broken, broken[:3]
    assert len(finished) > 1000  # the pipe (64 KiB) was full
    assert finished <= {r["id"] for r in _done_lines(output, "text")}


def test_a_second_sigterm_exits_at_once_while_the_output_pipe_is_full(client, url, processes):
    """The signal handlers logged before they acted: with stderr's pipe full (a stalled
    log reader) the first SIGTERM waited for the handler's lock before it stopped anything,
    and the second one, to exit at once, never got to exit."""
    proc = _stalled_on_its_output(client, url, processes, "1")
    os.kill(proc.pid, signal.SIGTERM)
    time.sleep(0.5)
    os.kill(proc.pid, signal.SIGTERM)
    try:
        code = proc.wait(10)  # the pipe still unread
    finally:
        proc.communicate(timeout=60)
    assert code == 1


def test_a_reader_gone_loses_the_lines_but_never_fails_a_job(monkeypatch):
    """stderr's reader died (`| tee` stopped, a log shipper restarted): every write fails
    with EPIPE. The lines are lost, as a record's would be, but nothing raises into the
    job that made them and the thread that writes every 100 ms keeps going. Before, the
    buffer's flush raised: the writing thread died and every thousandth line raised into
    a job's outcome."""
    read, write = os.pipe()
    os.close(read)
    stream = open(write, "w", buffering=1)  # noqa: SIM115 - closed below
    handler = WorkerHandler("text")
    handler.setStream(stream)
    monkeypatch.setattr(handler, "handleError", lambda record: None)  # reported, elsewhere
    try:
        for i in range(2500):
            handler.done("redismq.processing", f"{i:032x}", "naps.nap", 1, 0.001)
        handler.flush()
        time.sleep(0.3)  # the writing thread's turns
        assert handler._flusher is not None and handler._flusher.is_alive()
    finally:
        handler._done.set()
        with contextlib.suppress(OSError):
            stream.close()


def test_a_thread_that_logs_never_waits_for_the_stream():
    """A record is written by the handler's writing thread, never by the thread that logs:
    with stderr a full pipe nobody reads, the write waits for good, and a supervisor's main
    thread waited there in its stop line instead of stopping its children."""
    gate = threading.Event()

    class Stalled(io.StringIO):
        def write(self, text: str) -> int:
            gate.wait(10)
            return super().write(text)

    handler = WorkerHandler("text")
    handler.setStream(Stalled())
    logger = logging.getLogger("redismq.test.stalled")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logging_thread = threading.Thread(target=logger.warning, args=("stopping",))
        logging_thread.start()
        logging_thread.join(5)
        assert not logging_thread.is_alive()
        gate.set()
        assert wait_for(lambda: "stopping" in handler.stream.getvalue(), timeout=5)
    finally:
        gate.set()
        logger.removeHandler(handler)
        handler.close()


def test_a_job_that_forks_gives_its_child_none_of_the_workers_lines(client, url, processes):
    """A job that forks (multiprocessing's default on Linux) gave its child the worker's
    queued done lines: the child's first log line wrote them again, so finished jobs had
    two lines. The child now starts with none, and the fork waits for a write in progress
    (a child would otherwise inherit stderr's buffer locked)."""
    client.create_topic("naps", queues=1)
    quick = client.send_many("naps", [{"task": "naps.nap", "args": [0], "kwargs": {}}] * 50)
    client.send("naps", {"task": "naps.fork", "args": [], "kwargs": {}})
    app = "tests.apps.loglines_app:app"
    proc = processes.start("worker", app, "--url", url, "--burst", "--concurrency", "1")
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, output[-2000:]
    assert "the forked child logs" in output
    ids = [r["id"] for r in _done_lines(output, "text")]
    assert sorted(set(quick) - set(ids)) == [] and len(ids) == len(set(ids)) == 51, Counter(
        ids
    ).most_common(3)


def test_a_record_never_waits_for_another_threads_write():
    """While one thread writes (here: holds the handler's lock, as the line writer does
    when stderr's pipe is full), another thread's record is queued behind the lines and
    written by the writer, instead of waiting: the lease keeper, the heartbeat and the
    balancer log their errors, and a stalled log reader parked them on the lock until
    leases lapsed."""
    handler = WorkerHandler("text")
    handler.setStream(io.StringIO())
    logger = logging.getLogger("redismq.test.blocked")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        handler.done("redismq.processing", "a" * 32, "naps.nap", 1, 0.001)
        with handler.lock:  # another thread's write in progress
            logging_thread = threading.Thread(
                target=logger.warning, args=("cannot renew leases: broker down",)
            )
            logging_thread.start()
            logging_thread.join(5)
            assert not logging_thread.is_alive()
        assert wait_for(lambda: "cannot renew" in handler.stream.getvalue(), timeout=5)
        written = handler.stream.getvalue().splitlines()
        assert [("a" * 32) in written[0], "cannot renew" in written[1]] == [True, True]
    finally:
        logger.removeHandler(handler)
        handler.close()


def test_a_record_after_the_handler_closed_is_still_written():
    """At exit (`logging.shutdown` closed the handler) its writing thread is gone: a record
    logged later (an atexit hook's) is written by its own thread, not queued for nobody."""
    handler = WorkerHandler("text")
    handler.setStream(io.StringIO())
    handler.close()
    handler.handle(logging.makeLogRecord({"msg": "late", "levelname": "ERROR"}))
    assert "late" in handler.stream.getvalue()
