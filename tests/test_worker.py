"""The `redismq worker` command as a real process: burst mode, lease renewal of a long job,
graceful SIGTERM, message handlers and async tasks, and hand-written garbage in a stream.

Every task of tests/apps/worker_app.py leaves rows in a SQLite file, so a test can count how
often each job really ran, also in a process that was stopped or killed.
"""

from __future__ import annotations

import re
import signal
import subprocess
from collections import Counter
from pathlib import Path

import pytest
import redis
from apps import sideeffects
from conftest import skip_unless_ci, wait_for

from redismq import Client
from redismq.process import host_id
from redismq.status import topic_status

APP = "tests.apps.worker_app:app"
GROUP = "workers"


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "side-effects.db"
    sideeffects.connect(path).close()
    return path


def start_worker(processes, url: str, db: Path, *args: str, prefix: tuple[str, ...] = ()):
    """One worker process (no supervisor: the process we signal is the one that consumes)."""
    return processes.start(
        "worker",
        APP,
        "--url",
        url,
        "--processes",
        "1",
        "--log-level",
        "WARNING",
        *args,
        env={sideeffects.ENV_DB: str(db)},
        prefix=prefix,
    )


def finished(proc, timeout: float = 60.0) -> int:
    """Wait for a worker to exit with 0; on anything else, fail showing its output."""
    try:
        code = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f"worker did not exit within {timeout}s:\n{proc.stdout.read()}")
    if code != 0:
        pytest.fail(f"worker exited with {code}:\n{proc.stdout.read()}")
    return code


def task(name: str, *args: object) -> dict:
    return {"task": name, "args": list(args), "kwargs": {}}


def group_row(client: Client, topic: str, group: str = GROUP) -> dict:
    """The group's status row; all zeros while no worker has created the group yet."""
    rows = {g["name"]: g for g in topic_status(client, topic)["groups"]}
    return rows.get(group, {"done": 0, "pending": 0, "lag": 0, "retrying": 0, "dead": 0})


def consumer_names(client: Client, topic: str, group: str = GROUP) -> set[str]:
    t = client.topic(topic, create=False)
    names: set[str] = set()
    for q in range(t.queues):
        stream = client.router.queue_keys(topic, q).stream
        r = client.router.queue_broker(t, q).redis
        try:
            names |= {c["name"].decode() for c in r.xinfo_consumers(stream, group)}
        except redis.ResponseError:  # no stream or no group yet: no consumer yet
            continue
    return names


def retry_stream_length(client: Client, topic: str, group: str = GROUP) -> int:
    t = client.topic(topic, create=False)
    return sum(
        client.router.queue_broker(t, q).redis.xlen(
            client.router.queue_keys(topic, q).retry_stream(group)
        )
        for q in range(t.queues)
    )


def test_burst_worker_waits_for_delayed_and_retrying_work_then_exits_0(client, url, db, processes):
    client.create_topic("work", queues=2)
    client.send_many("work", [task("work.record", i) for i in range(50)])
    client.send("work", task("work.record", 50), delay=1.0)
    client.send("work", task("work.flaky", 0))

    finished(start_worker(processes, url, db, "--topic", "work", "--burst"))

    assert sideeffects.runs(db, "work") == Counter({str(i): 1 for i in range(51)})
    assert sideeffects.runs(db, "flaky") == Counter({"0": 2}), "failed once, then retried"
    row = group_row(client, "work")
    assert (row["done"], row["pending"], row["lag"], row["retrying"], row["dead"]) == (
        52,
        0,
        0,
        0,
        0,
    )
    assert topic_status(client, "work")["delayed"] == 0


def test_long_job_is_run_once_while_its_lease_is_renewed(client, url, db, processes):
    client.create_topic("slow", queues=2)
    args = ("--topic", "slow", "--visibility-timeout", "1")
    workers = [start_worker(processes, url, db, *args) for _ in range(2)]
    host = host_id()
    assert wait_for(
        lambda: all(
            any(n.startswith(f"{host}:{w.pid}:") for n in consumer_names(client, "slow"))
            for w in workers
        ),
        timeout=30,
    ), "both workers should be consuming before the job is sent"

    client.send("slow", task("slow.run", 1, 4.0))  # four times the visibility timeout
    assert wait_for(lambda: group_row(client, "slow")["done"] == 1, timeout=30)

    assert sideeffects.runs(db, "start") == Counter({"1": 1}), "the job started twice"
    assert sideeffects.runs(db, "end") == Counter({"1": 1})
    row = group_row(client, "slow")
    assert (row["pending"], row["duplicates"], row["retrying"], row["dead"]) == (0, 0, 0, 0)
    for w in workers:
        w.send_signal(signal.SIGTERM)
    for w in workers:
        finished(w, 30)


def test_sigterm_finishes_the_running_job_and_hands_back_the_fetched_rest(
    client, url, db, processes
):
    jobs = 300
    client.create_topic("slow", queues=2)
    client.send_many("slow", [task("slow.run", i, 0.005) for i in range(jobs)])

    first = start_worker(processes, url, db, "--topic", "slow")
    assert wait_for(lambda: sideeffects.count(db, "end") >= 40, timeout=30)
    first.send_signal(signal.SIGTERM)
    finished(first, 30)

    started, ended = sideeffects.runs(db, "start"), sideeffects.runs(db, "end")
    assert started == ended, "a job that had started was not finished"
    assert max(started.values()) == 1
    assert sum(started.values()) < jobs, "SIGTERM should land in the middle of the run"
    row = group_row(client, "slow")
    assert row["pending"] == 0, "nothing may stay leased to the stopped worker"
    assert row["done"] == len(started)
    assert row["done"] + row["lag"] == jobs
    assert retry_stream_length(client, "slow") > 0, "fetched, unstarted jobs go back at once"

    # The default visibility timeout (30 s) is never waited for: nothing is left to take over.
    finished(start_worker(processes, url, db, "--topic", "slow", "--burst"))
    assert sideeffects.runs(db, "start") == Counter({str(i): 1 for i in range(jobs)})
    assert sideeffects.runs(db, "end") == Counter({str(i): 1 for i in range(jobs)})
    row = group_row(client, "slow")
    assert (row["done"], row["pending"], row["lag"], row["duplicates"]) == (jobs, 0, 0, 0)


def test_message_handler_and_async_task_run_with_consumers_named_host_pid_n(
    client, url, db, processes
):
    client.create_topic("events", queues=2)
    client.create_topic("async", queues=2)
    client.send_many("events", [{"n": i} for i in range(30)])
    client.send_many("async", [task("async.record", i) for i in range(30)])

    worker = start_worker(processes, url, db, "--topic", "events", "--topic", "async")
    expected = Counter({str(i): 1 for i in range(30)})
    assert wait_for(
        lambda: (
            group_row(client, "events", "handlers")["done"] == 30
            and group_row(client, "async")["done"] == 30
        ),
        timeout=30,
    )
    assert sideeffects.runs(db, "event") == expected
    assert sideeffects.runs(db, "async") == expected
    pattern = re.compile(rf"{re.escape(host_id())}:{worker.pid}:\d+")
    names = consumer_names(client, "events", "handlers") | consumer_names(client, "async")
    assert names, "the worker registered no consumer"
    assert all(pattern.fullmatch(n) for n in names), names
    worker.send_signal(signal.SIGTERM)
    finished(worker)
    leftover = consumer_names(client, "events", "handlers") | consumer_names(client, "async")
    assert leftover == set(), "a worker that stopped cleanly leaves its consumers behind"


def test_hand_written_stream_entries_are_dead_lettered_and_the_worker_keeps_going(
    client, url, db, processes
):
    client.create_topic("work", queues=1)
    client.send_many("work", [task("work.record", i) for i in range(10)])
    stream = client.router.queue_keys("work", 0).stream
    r = client.router.queue_broker(client.topic("work"), 0).redis
    r.xadd(stream, {"junk": "no id, no body"})
    r.xadd(stream, {"id": "hand-1", "body": "{not json"})
    r.xadd(stream, {"id": b"\xff\xfe", "body": "1"})
    client.send("work", task("no.such.task", 1))
    client.send("work", "a string is not a task")
    client.send_many("work", [task("work.record", i) for i in range(10, 20)])

    finished(start_worker(processes, url, db, "--topic", "work", "--burst"))

    assert sideeffects.runs(db, "work") == Counter({str(i): 1 for i in range(20)})
    row = group_row(client, "work")
    assert (row["done"], row["dead"], row["pending"], row["lag"]) == (20, 5, 0, 0)
    dead = client.dead_letters("work", GROUP)
    assert len(dead) == 5
    assert all(d.reason for d in dead), [d.reason for d in dead]
    assert any("no.such.task" in d.reason for d in dead), [d.reason for d in dead]


def test_a_job_that_calls_sys_exit_fails_and_the_worker_goes_on(client, url, db, processes):
    """A task that calls sys.exit (a CLI's code, argparse on bad input) fails like any other
    error: dead-lettered with its traceback, and the thread that ran it runs the next job.
    SystemExit is not an Exception: it ended the fetch thread, silently, and the worker
    (at --concurrency 1, its only thread gone) exited 0 with the next job never run."""
    client.create_topic("work", queues=1)
    bad = client.send("work", task("work.exits", 3))
    good = [client.send("work", task("work.record", i)) for i in range(3)]
    proc = start_worker(processes, url, db, "--concurrency", "1")
    assert wait_for(lambda: group_row(client, "work")["done"] == 3, timeout=30), proc.poll()
    assert proc.poll() is None  # still running
    [dead] = client.dead_letters("work", GROUP)
    assert dead.id == bad and "SystemExit: 3" in dead.traceback
    assert "the job raised SystemExit" in dead.reason
    assert sideeffects.runs(db, "work") == {"0": 1, "1": 1, "2": 1} and good


def test_workers_in_containers_that_share_the_host_name_keep_apart(client, url, db, processes):
    """Containers on the host's network (`docker --network host`, Kubernetes'
    hostNetwork) share its hostname but each has its own pids, so two workers can both be
    pid 1: their ids (`host:pid`) and consumer names were the same, and Redis took them
    for one worker and one consumer (one heartbeat record, one pending list for both).
    Real processes, each the first of a pid namespace of its own (`unshare`, as root)."""
    try:
        subprocess.run(["unshare", "--pid", "--fork", "true"], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        skip_unless_ci(f"cannot make a pid namespace here: {exc}")
    client.create_topic("work", queues=2)
    ids = [client.send("work", task("work.record", i)) for i in range(200)]
    prefix = ["unshare", "--pid", "--fork", "--kill-child=SIGKILL"]
    workers = [start_worker(processes, url, db, prefix=prefix) for _ in range(2)]
    workers_key = client.router.keys.workers
    assert wait_for(lambda: client.meta.hlen(workers_key) == 2, timeout=30), [
        w.poll() for w in workers
    ]
    assert all(text.endswith(":1") for text in map(bytes.decode, client.meta.hkeys(workers_key)))
    assert wait_for(lambda: group_row(client, "work")["done"] == 200, timeout=60)
    assert len(consumer_names(client, "work")) == 2 * 8  # 8 fetch threads each
    assert sideeffects.runs(db, "work") == {str(i): 1 for i in range(200)} and ids


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ("tests.apps.runtime_app:nope", "module 'tests.apps.runtime_app' has no attribute 'nope'"),
        ("tests.apps.runtime_app:os", "'tests.apps.runtime_app:os' is a module, not a redismq App"),
        ("no_such_module_here:app", "cannot import 'no_such_module_here'"),
    ],
)
def test_an_app_spec_that_names_no_app_says_what_it_found(spec, says):
    from redismq.workers.loader import AppNotFound, load_app

    with pytest.raises(AppNotFound, match=re.escape(says)):
        load_app(spec)
