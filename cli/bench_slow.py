"""Slow-job scenarios of `redismq bench`: jobs that wait (sleep) instead of computing.

Each scenario sends N tasks one by one to a topic of 4 queues, then a worker drains them
with `--burst`. Figures:

- utilization: ideal time (N × job time / (processes × concurrency)) over the measured
  time from the first start to the last end, as recorded by the tasks themselves (lines
  appended to a file: no Redis call between a job's end and its slot's release);
- Redis writes per task: write commands the worker sends while it drains (seen by
  MONITOR; a script call counts once, as one atomic write, if it wrote anything, and the
  commands it runs are not counted again), over N;
- re-appended: XADD calls while the worker drains (messages handed back and written again);
- worst displacement: how many places after its send position a task started, at most.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import os
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Any

import redis
from rich.console import Console
from rich.table import Table

from redismq import Client
from redismq.scripts import NAMES, source
from redismq.server import LocalServer

from .bench_measure import (
    BenchError,
    ServerStats,
    check_exit,
    wait_measured,
    wait_timeout,
    worker_process,
)
from .bench_report import NAMESPACE, QUEUES

# The write commands a worker may send per task. Left out: XREADGROUP (it writes only the
# delivery) and XGROUP (joining and leaving the group, once per consumer, not per task).
WRITES = frozenset(
    {
        *("xadd", "xack", "xclaim", "xautoclaim", "xdel", "publish"),
        *("zadd", "zrem", "zremrangebyscore", "hset", "hdel", "hincrby", "sadd", "srem"),
        *("set", "del", "pexpire", "expire", "incr", "incrby", "rpush"),
    }
)


class WriteCounter:
    """Counts the write commands clients send (MONITOR). A script call counts once, by its
    name, when it wrote (the commands it runs are not counted again): the `read` script
    that found nothing and the read-only `backlog` script (a --burst worker's idle threads
    ask it) write nothing."""

    def __init__(self, url: str) -> None:
        self.count = 0
        self._scripts = {hashlib.sha1(source(n).encode()).hexdigest(): n for n in NAMES}
        self._script: str | None = None  # the script call whose commands MONITOR shows now
        self._wrote = False  # whether that call wrote yet
        self.by_command: collections.Counter[str] = collections.Counter()
        self._redis = redis.Redis.from_url(url)
        self._monitor = self._redis.monitor().__enter__()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with contextlib.suppress(redis.RedisError, OSError, ValueError):
            for cmd in self._monitor.listen():
                name, _, rest = cmd["command"].partition(" ")
                name = name.lower()
                if cmd.get("client_type") == "lua":
                    if self._script is not None and not self._wrote and name in WRITES:
                        self._wrote = True
                        self._count(f"evalsha {self._script}")
                    continue
                self._script = None
                if name in ("evalsha", "eval"):
                    self._script, self._wrote = self._scripts.get(rest[:40], name), False
                elif name in WRITES:
                    self._count(name)

    def _count(self, name: str) -> None:
        self.count += 1
        self.by_command[name] += 1

    def stop(self) -> int:
        """Stop counting; the count so far."""
        time.sleep(0.2)  # let MONITOR's stream catch up with the last commands
        count = self.count
        with contextlib.suppress(redis.RedisError, OSError):
            self._monitor.connection.disconnect()
        self._redis.close()
        return count


@dataclass(frozen=True, slots=True)
class SlowScenario:
    """N tasks of `seconds` each, drained by `processes` × `concurrency`."""

    name: str
    jobs: int
    seconds: float
    concurrency: int
    processes: int = 1
    use_async: bool = False

    @property
    def ideal(self) -> float:
        return self.jobs * self.seconds / (self.processes * self.concurrency)


SCENARIOS = (
    SlowScenario("slow_sync_200x50ms_c8", 200, 0.05, 8),
    SlowScenario("slow_async_1000x600ms_c200", 1000, 0.6, 200, use_async=True),
)
QUICK_SCENARIOS = (
    SlowScenario("slow_sync_40x50ms_c4", 40, 0.05, 4),
    SlowScenario("slow_async_100x200ms_c50", 100, 0.2, 50, use_async=True),
)


def run_slow(sc: SlowScenario) -> dict[str, Any]:
    """Run one scenario on a fresh local server; returns its figures."""
    from .bench_app import SLOW_RECORDS_ENV, slow, slow_async

    with LocalServer() as srv, tempfile.TemporaryDirectory() as tmp:
        client = Client(srv.url, namespace=NAMESPACE)
        path = os.path.join(tmp, "records")
        try:
            task = slow_async if sc.use_async else slow
            client.create_topic(task.topic, queues=QUEUES)
            task.app.connect(client)
            for i in range(sc.jobs):
                task.send(i, sc.seconds)
            before = ServerStats.take(client.meta)
            writes = WriteCounter(srv.url)
            args = [
                "-m",
                "redismq.cli.main",
                "worker",
                "redismq.cli.bench_app:app",
                "--url",
                srv.url,
            ]
            args += ["--topic", task.topic, "--processes", str(sc.processes)]
            args += ["--concurrency", str(sc.concurrency), "--burst", "--log-level", "WARNING"]
            started = time.monotonic()
            with worker_process(args, srv.url, {SLOW_RECORDS_ENV: path}) as proc:
                fin = wait_measured(proc, started, wait_timeout(sc.jobs, sc.seconds))
            writes_sent = writes.stop()
            check_exit(f"the worker ({sc.name})", fin)
            calls, _ = ServerStats.take(client.meta).since(before)
        finally:
            client.close()
        records = read_records(path)
    return slow_figures(sc, calls, records, fin.wall, writes_sent)


def read_records(path: str) -> list[list[float]]:
    """The tasks' records, one JSON list per line (none: the file was never made)."""
    with contextlib.suppress(FileNotFoundError), open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]
    return []


def slow_figures(
    sc: SlowScenario, calls: dict[str, int], records: list[list[float]], wall: float, writes: int
) -> dict[str, Any]:
    """The figures of one slow scenario from its command counts and the tasks' records."""
    if len(records) != sc.jobs:
        raise BenchError(f"{sc.name}: {len(records)} of {sc.jobs} tasks ran")
    first = min(r[1] for r in records)
    last = max(r[2] for r in records)
    by_start = sorted(records, key=lambda r: r[1])
    displacement = max(rank - int(r[0]) for rank, r in enumerate(by_start))
    return {
        "jobs": sc.jobs,
        "job_s": sc.seconds,
        "processes": sc.processes,
        "concurrency": sc.concurrency,
        "ideal_s": round(sc.ideal, 3),
        "drain_s": round(last - first, 3),
        "worker_wall_s": round(wall, 3),
        "utilization": round(sc.ideal / max(last - first, 1e-9), 3),
        "writes_per_task": round(writes / sc.jobs, 2),
        "reappended": calls.get("xadd", 0),
        "worst_displacement": displacement,
        "calls_per_task": {
            c: round(n / sc.jobs, 2) for c, n in sorted(calls.items(), key=lambda kv: -kv[1])
        },
    }


def bench_slow(quick: bool) -> dict[str, dict[str, Any]]:
    """Every slow scenario, by name."""
    return {sc.name: run_slow(sc) for sc in (QUICK_SCENARIOS if quick else SCENARIOS)}


def print_slow(figures: dict[str, dict[str, Any]], console: Console) -> None:
    """The slow-job scenarios as a table."""
    table = Table(title="Slow jobs (sleeping tasks; targets: utilization ≥ 95%, ≤ 3 writes)")
    for column in ("scenario", "ideal s", "drain s", "utilization", "writes/task"):
        table.add_column(column, justify="left" if column == "scenario" else "right")
    table.add_column("re-appended", justify="right")
    table.add_column("worst displacement", justify="right")
    for name, f in figures.items():
        table.add_row(
            name,
            f"{f['ideal_s']:.2f}",
            f"{f['drain_s']:.2f}",
            f"{f['utilization']:.1%}",
            f"{f['writes_per_task']:.2f}",
            str(f["reappended"]),
            str(f["worst_displacement"]),
        )
    console.print(table)


if __name__ == "__main__":
    import sys

    jobs, seconds, conc, procs = (float(a) for a in sys.argv[1:5])
    sc = SlowScenario("adhoc", int(jobs), seconds, int(conc), int(procs), "async" in sys.argv)
    print(json.dumps(run_slow(sc), indent=1))
