"""`redismq bench`: redismq against the raw redis-py ceiling and against RQ, in one run.

Every scenario runs on a fresh local server (`LocalServer`), stopped at its end. Workers
run as subprocesses, so that this process measures wall time only and the workers' CPU
time is read from the outside (psutil, else the rusage of `os.wait4`).

How the figures are made:

- send rates: messages / wall time of the loop, in this process.
- drain rates: steady state, from the first to the last completion recorded by the queue
  itself (redismq: the scores of the group's done sets, in ms; RQ: each job's `ended_at`),
  so that process start-up and the burst exit are not counted; the tasks completed at the
  first instant are not counted either (their work lies before the window).
- worker CPU per task: the CPU time of the worker process tree over the same window
  (sampled every 20 ms), divided by the tasks in the window.
- Redis commands per completed task: INFO commandstats before sending and after the
  drain, every command counted (also those run inside Lua scripts), INFO excepted.
- Redis CPU per completed task: used_cpu_user + used_cpu_sys of the server over the same
  span (command execution and network I/O).

Run `python -m cli.bench rq-worker URL simple|fork [--burst]` to start the RQ worker the
bench uses.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import redis
from redis.typing import EncodableT, FieldT
from rich.console import Console
from rich.table import Table
from rich.text import Text

from redismq import App, Client, RedisMQError, Task
from redismq.keys import QueueKeys
from redismq.message import stream_entries
from redismq.process import die_with_parent
from redismq.server import LocalServer

ROOT = Path(__file__).resolve().parent.parent
NAMESPACE = "rmq"
QUEUES = 4
GROUP = "workers"
BATCH = 100
CONCURRENCY = 8  # the worker command's default --concurrency, which the bench keeps
RQ_QUEUE = "bench"
RQ_FORK_JOBS = 500
RQ_FORK_JOBS_QUICK = 100
DEFAULT_JOBS = 20_000
QUICK_JOBS = 500
LATENCY_SENDS = 500
LATENCY_SENDS_QUICK = 50
LATENCY_GAP = 0.005
# RQ needs ~5 ms per job here: probes 5 ms apart would queue up behind each other, so
# they are spaced enough to find its queue idle.
RQ_LATENCY_GAP = 0.025
SAMPLE_EVERY = 0.02
RAW_STREAM_ONE = "raw:one"
RAW_STREAM = "raw:stream"
# The fields of a raw entry: the shape (and size) of a redismq entry of a no-op task.
RAW_FIELDS: dict[FieldT, EncodableT] = {
    b"id": "0190f3c2a1b2c3d4e5f60718293a4b5c",
    b"body": b'{"task":"bench.noop","args":[],"kwargs":{}}',
    b"created": 1_700_000_000_000,
}


class BenchError(Exception):
    """A scenario could not run to its end (a worker failed, a wait timed out)."""


# --- what is reported ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Target:
    """A goal for a value or a ratio: `op` is one of >=, <=, <."""

    op: str
    bound: float

    def met(self, value: float) -> bool:
        return {
            ">=": value >= self.bound,
            "<=": value <= self.bound,
            "<": value < self.bound,
        }[self.op]

    def __str__(self) -> str:
        sign = {">=": "≥", "<=": "≤", "<": "<"}[self.op]
        return f"{sign} {self.bound:g}"


@dataclass(frozen=True, slots=True)
class Spec:
    """One figure of the report: what it is, its unit, its target and its baselines."""

    name: str
    section: str
    label: str
    unit: str
    short: str = ""  # how the ratio column names this figure as a baseline
    target: Target | None = None
    ratios: tuple[tuple[str, Target | None], ...] = ()


RAW = "raw redis-py (the ceiling)"
RMQ = "redismq"
RQ = "RQ"

SPECS: tuple[Spec, ...] = (
    Spec("raw_xadd_rate", RAW, "XADD one by one", "msg/s", short="raw XADD"),
    Spec(
        "raw_xadd_pipelined_rate",
        RAW,
        "XADD pipelined, batches of 100",
        "msg/s",
        short="raw pipelined XADD",
    ),
    Spec(
        "raw_consume_rate",
        RAW,
        "XREADGROUP COUNT 100, JSON decode, no-op call, XACK per batch",
        "msg/s",
        short="raw consumer loop",
    ),
    Spec("raw_consume_cpu_us", RAW, "consumer CPU per message", "µs", short="raw loop"),
    Spec(
        "raw_commands_per_msg",
        RAW,
        "Redis commands per message (send + consume)",
        "cmd",
        short="raw",
    ),
    Spec("raw_server_us_per_msg", RAW, "Redis CPU per message (send + consume)", "µs", short="raw"),
    Spec(
        "send_rate",
        RMQ,
        "Task.send one by one",
        "msg/s",
        short="redismq send",
        ratios=(("raw_xadd_rate", Target(">=", 0.85)),),
    ),
    Spec(
        "send_many_rate",
        RMQ,
        "Client.send_many, batches of 100",
        "msg/s",
        ratios=(("raw_xadd_pipelined_rate", Target(">=", 0.5)),),
    ),
    Spec(
        "worker1_rate",
        RMQ,
        "1 worker process draining (--burst)",
        "tasks/s",
        short="redismq 1 process",
        ratios=(("raw_consume_rate", Target(">=", 0.3)), ("rq_simple_rate", Target(">=", 100))),
    ),
    Spec(
        "worker1_cpu_us",
        RMQ,
        "worker CPU per task, 1 process",
        "µs",
        short="redismq 1 process",
        ratios=(("raw_consume_cpu_us", None),),
    ),
    Spec(
        "worker2_rate",
        RMQ,
        "--processes 2 draining (--burst)",
        "tasks/s",
        ratios=(("worker1_rate", None), ("raw_consume_rate", None)),
    ),
    Spec(
        "worker2_cpu_us",
        RMQ,
        "worker CPU per task, 2 processes",
        "µs",
        ratios=(("worker1_cpu_us", None),),
    ),
    Spec(
        "commands_per_task",
        RMQ,
        "Redis commands per completed task (send_many + 1 worker)",
        "cmd",
        short="redismq",
        target=Target("<=", 3),
        ratios=(("raw_commands_per_msg", None),),
    ),
    Spec(
        "server_us_per_task",
        RMQ,
        "Redis CPU per completed task (send_many + 1 worker)",
        "µs",
        short="redismq",
        target=Target("<=", 15),
        ratios=(("raw_server_us_per_msg", None),),
    ),
    Spec(
        "latency_p50_ms",
        RMQ,
        f"idle queue, send → start, p50 ({LATENCY_GAP * 1000:g} ms apart)",
        "ms",
        short="redismq",
        target=Target("<", 0.7),
    ),
    Spec(
        "latency_p99_ms",
        RMQ,
        f"idle queue, send → start, p99 ({LATENCY_GAP * 1000:g} ms apart)",
        "ms",
        short="redismq",
        target=Target("<", 1.5),
    ),
    Spec(
        "rq_enqueue_rate",
        RQ,
        "Queue.enqueue one by one",
        "jobs/s",
        ratios=(("send_rate", None),),
    ),
    Spec(
        "rq_simple_rate",
        RQ,
        "SimpleWorker draining (--burst)",
        "jobs/s",
        short="RQ SimpleWorker",
        ratios=(("raw_consume_rate", None),),
    ),
    Spec(
        "rq_simple_cpu_us",
        RQ,
        "SimpleWorker CPU per job",
        "µs",
        ratios=(("worker1_cpu_us", None),),
    ),
    Spec(
        "rq_fork_rate",
        RQ,
        "Worker (forks per job) draining (--burst)",
        "jobs/s",
        ratios=(("raw_consume_rate", None),),
    ),
    Spec(
        "rq_fork_cpu_us",
        RQ,
        "Worker (forking) CPU per job",
        "µs",
        ratios=(("worker1_cpu_us", None),),
    ),
    Spec(
        "rq_commands_per_task",
        RQ,
        "Redis commands per completed job (enqueue + SimpleWorker)",
        "cmd",
        ratios=(("commands_per_task", None),),
    ),
    Spec(
        "rq_server_us_per_task",
        RQ,
        "Redis CPU per completed job (enqueue + SimpleWorker)",
        "µs",
        ratios=(("server_us_per_task", None),),
    ),
    Spec(
        "rq_latency_p50_ms",
        RQ,
        f"idle queue, enqueue → start, p50 (SimpleWorker, {RQ_LATENCY_GAP * 1000:g} ms apart)",
        "ms",
        ratios=(("latency_p50_ms", None),),
    ),
    Spec(
        "rq_latency_p99_ms",
        RQ,
        f"idle queue, enqueue → start, p99 (SimpleWorker, {RQ_LATENCY_GAP * 1000:g} ms apart)",
        "ms",
        ratios=(("latency_p99_ms", None),),
    ),
)
FIGURES = tuple(s.name for s in SPECS)


@dataclass(slots=True)
class Measured:
    """A measured value, and for a drain how many tasks were sent and completed."""

    value: float
    sent: int | None = None
    completed: int | None = None


@dataclass(slots=True)
class Results:
    """Everything one bench run measured."""

    jobs: int
    quick: bool
    rq_fork_jobs: int
    latency_sends: int
    values: dict[str, Measured] = field(default_factory=dict)
    commands: dict[str, dict[str, float]] = field(default_factory=dict)
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    server: str = ""

    def put(
        self, name: str, value: float, sent: int | None = None, done: int | None = None
    ) -> None:
        if name not in FIGURES:
            raise KeyError(name)
        self.values[name] = Measured(value, sent, done)


def report(results: Results) -> dict[str, Any]:
    """The JSON-ready report: every figure with its unit, ratios and targets."""
    figures: dict[str, Any] = {}
    for spec in SPECS:
        m = results.values.get(spec.name)
        if m is None:
            continue
        ratios = []
        for baseline, target in spec.ratios:
            base = results.values.get(baseline)
            if base is None or not base.value:
                continue
            ratio = m.value / base.value
            ratios.append(
                {
                    "baseline": baseline,
                    "ratio": ratio,
                    "target": str(target) if target else None,
                    "met": target.met(ratio) if target else None,
                }
            )
        figures[spec.name] = {
            "section": spec.section,
            "label": spec.label,
            "value": m.value,
            "unit": spec.unit,
            "sent": m.sent,
            "completed": m.completed,
            "target": str(spec.target) if spec.target else None,
            "met": spec.target.met(m.value) if spec.target else None,
            "ratios": ratios,
        }
    return {
        "jobs": results.jobs,
        "quick": results.quick,
        "rq_fork_jobs": results.rq_fork_jobs,
        "latency_sends": results.latency_sends,
        "queues": QUEUES,
        "concurrency": CONCURRENCY,
        "server": results.server,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "figures": figures,
        "commands": results.commands,
        "runs": results.runs,
        "notes": results.notes,
    }


def _number(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _times(ratio: float) -> str:
    if ratio >= 10:
        return f"{ratio:,.0f}×"
    if ratio >= 1:
        return f"{ratio:.2f}×"
    return f"{ratio:.2g}×"


def _mark(met: bool | None) -> str:
    return "" if met is None else (" [green]✓[/green]" if met else " [red]✗[/red]")


def print_report(rep: dict[str, Any], console: Console) -> None:
    """The report as one table: figure, value, unit, done/sent, ratio, target."""
    table = Table(
        title=(
            f"redismq bench: {rep['jobs']:,} jobs per scenario, a topic of {rep['queues']} "
            f"queues, {rep['server']}, Python {rep['python']}, {rep['cpus']} CPUs"
        ),
        caption="\n".join(rep["notes"]),
        caption_justify="left",
    )
    for col, justify in (
        ("figure", "left"),
        ("value", "right"),
        ("unit", "left"),
        ("done/sent", "right"),
        ("ratio", "left"),
        ("target", "left"),
    ):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    shorts = {s.name: s.short or s.label for s in SPECS}
    section = None
    for spec in SPECS:
        fig = rep["figures"].get(spec.name)
        if fig is None:
            continue
        if fig["section"] != section:
            section = fig["section"]
            table.add_section()
            table.add_row(f"[bold]{section}[/bold]")
        ratio_lines, target_lines = [], []
        for r in fig["ratios"]:
            ratio_lines.append(f"{_times(r['ratio'])} {shorts[r['baseline']]}")
            target_lines.append(f"{r['target']}{_mark(r['met'])}" if r["target"] else "")
        if fig["target"]:
            target_lines.insert(0, f"{fig['target']} {fig['unit']}{_mark(fig['met'])}")
            ratio_lines.insert(0, "")
        counts = f"{fig['completed']:,}/{fig['sent']:,}" if fig["sent"] is not None else ""
        table.add_row(
            f"  {fig['label']}",
            _number(fig["value"]),
            fig["unit"],
            counts,
            "\n".join(ratio_lines),
            "\n".join(target_lines).strip("\n"),
        )
    console.print(table)


# --- measuring the server -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ServerStats:
    """INFO commandstats calls per command and the server's CPU seconds, at one moment."""

    calls: dict[str, int]
    cpu: float

    @classmethod
    def take(cls, r: redis.Redis) -> ServerStats:
        stats = r.info("commandstats")
        cpu = r.info("cpu")
        calls = {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}
        return cls(calls, float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"]))

    def since(self, before: ServerStats) -> tuple[dict[str, int], float]:
        """Calls per command (INFO excepted) and CPU seconds between `before` and now."""
        calls = {
            name: n - before.calls.get(name, 0)
            for name, n in self.calls.items()
            if name != "info" and n - before.calls.get(name, 0) > 0
        }
        return calls, self.cpu - before.cpu


def per_task(calls: dict[str, int], tasks: int) -> dict[str, float]:
    """Calls per command per task, most frequent first."""
    return {name: round(n / tasks, 4) for name, n in sorted(calls.items(), key=lambda kv: -kv[1])}


def server_name(srv: LocalServer) -> str:
    r = srv.client()
    try:
        info = r.info("server")
    finally:
        r.close()
    engine = "valkey" if "valkey" in os.path.basename(srv.binary) else "redis"
    version = info.get("valkey_version") or info.get("redis_version")
    return f"{engine} {version}"


# --- running and measuring workers ---------------------------------------------------


def _psutil() -> Any:
    try:
        import psutil
    except ImportError:
        return None
    return psutil


class CpuSampler:
    """Samples the CPU seconds of a process tree (alive descendants and reaped ones)."""

    def __init__(self, pid: int) -> None:
        self.psutil = _psutil()
        self.samples: list[tuple[float, float]] = []
        self._root = self.psutil.Process(pid) if self.psutil else None
        self._tree: list[Any] = [self._root] if self._root else []
        self._refreshed = 0.0

    def sample(self) -> None:
        if self._root is None:
            return
        now = time.monotonic()
        if now - self._refreshed > 0.25:
            self._refreshed = now
            with contextlib.suppress(self.psutil.Error):
                self._tree = [self._root, *self._root.children(recursive=True)]
        total = 0.0
        for proc in self._tree:
            with contextlib.suppress(self.psutil.Error):
                t = proc.cpu_times()
                total += t.user + t.system + t.children_user + t.children_system
        self.samples.append((time.time(), total))

    def at(self, when: float) -> float | None:
        """CPU seconds at a moment (linear between samples), None outside the samples."""
        s = self.samples
        if not s or when < s[0][0] or when > s[-1][0]:
            return None
        for (t0, c0), (t1, c1) in zip(s, s[1:], strict=False):
            if t0 <= when <= t1:
                return c0 if t1 == t0 else c0 + (c1 - c0) * (when - t0) / (t1 - t0)
        return s[-1][1]


@dataclass(slots=True)
class Finished:
    """A worker subprocess that ended: exit code, wall time, CPU (rusage) and samples."""

    code: int
    wall: float
    cpu: float
    sampler: CpuSampler
    log: str


def _env(url: str) -> dict[str, str]:
    path = os.environ.get("PYTHONPATH")
    return {
        **os.environ,
        "REDISMQ_URL": url,
        "REDISMQ_NAMESPACE": NAMESPACE,
        "PYTHONPATH": f"{ROOT}{os.pathsep}{path}" if path else str(ROOT),
    }


@contextlib.contextmanager
def worker_process(args: list[str], url: str) -> Iterator[subprocess.Popen[bytes]]:
    """A worker subprocess (stderr to a temporary file), stopped and reaped at the end."""
    parent = os.getpid()
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            [sys.executable, *args],
            cwd=ROOT,
            env=_env(url),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            # a bench killed outright takes its workers along
            preexec_fn=lambda: die_with_parent(signal.SIGTERM, parent),
        )
        proc.log_file = log  # type: ignore[attr-defined]
        try:
            yield proc
        finally:
            stop_process(proc)


def stop_process(proc: subprocess.Popen[bytes], grace: float = 15.0) -> None:
    """SIGTERM, then SIGKILL after `grace` seconds; reaps the process."""
    if proc.returncode is not None:
        return
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()


def _log_tail(proc: subprocess.Popen[bytes], lines: int = 15) -> str:
    log = getattr(proc, "log_file", None)
    if log is None:
        return ""
    log.seek(0)
    text = log.read().decode("utf-8", "replace").rstrip()
    return "\n".join(text.splitlines()[-lines:])


def wait_measured(proc: subprocess.Popen[bytes], started: float, timeout: float) -> Finished:
    """Wait for a worker subprocess to exit, sampling its CPU; its rusage from wait4."""
    sampler = CpuSampler(proc.pid)
    deadline = time.monotonic() + timeout
    while True:
        sampler.sample()
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            break
        if time.monotonic() > deadline:
            raise BenchError(
                f"{' '.join(map(str, proc.args[1:4]))} did not finish within {timeout:.0f}s; "  # type: ignore[index]
                f"last lines:\n"
                f"{_log_tail(proc)}"
            )
        time.sleep(SAMPLE_EVERY)
    wall = time.monotonic() - started
    cpu = usage.ru_utime + usage.ru_stime
    return Finished(proc.returncode, wall, cpu, sampler, _log_tail(proc))


def _check_exit(what: str, fin: Finished) -> None:
    if fin.code != 0:
        raise BenchError(f"{what} exited with code {fin.code}; last lines:\n{fin.log}")


@dataclass(frozen=True, slots=True)
class Window:
    """From the first to the last completion (epoch seconds), and the tasks in between."""

    first: float
    last: float
    completed: int
    at_first: int

    @property
    def tasks(self) -> int:
        return self.completed - self.at_first

    @property
    def seconds(self) -> float:
        return self.last - self.first


def steady(window: Window, fin: Finished) -> tuple[float, float, bool]:
    """Tasks per second and worker CPU µs per task over the window; and whether the CPU
    figure is steady-state (else it is the whole process's, start-up included)."""
    if window.tasks > 0 and window.seconds > 0:
        rate = window.tasks / window.seconds
    else:  # everything completed at one instant: fall back to the process's wall time
        rate = window.completed / fin.wall
    c0, c1 = fin.sampler.at(window.first), fin.sampler.at(window.last)
    if c0 is not None and c1 is not None and c1 > c0 and window.tasks > 0:
        return rate, (c1 - c0) / window.tasks * 1e6, True
    return rate, fin.cpu / window.completed * 1e6, False


def run_record(fin: Finished, window: Window, sent: int, steady_cpu: bool) -> dict[str, Any]:
    return {
        "sent": sent,
        "completed": window.completed,
        "exit_code": fin.code,
        "wall_s": round(fin.wall, 3),
        "cpu_total_s": round(fin.cpu, 3),
        "window_s": round(window.seconds, 3),
        "tasks_in_window": window.tasks,
        "cpu_steady_state": steady_cpu,
    }


def _timeout(jobs: int, per_job: float) -> float:
    return 60.0 + jobs * per_job


# --- scenarios ----------------------------------------------------------------------


def _rate(n: int, seconds: float) -> float:
    return n / max(seconds, 1e-9)


def bench_raw(res: Results, n: int) -> None:
    """XADD one by one, XADD pipelined, and a bare consumer loop, with redis-py alone."""
    with LocalServer() as srv:
        res.server = server_name(srv)
        r = redis.Redis.from_url(srv.url)
        r.ping()
        started = time.perf_counter()
        for _ in range(n):
            r.xadd(RAW_STREAM_ONE, RAW_FIELDS)
        res.put("raw_xadd_rate", _rate(n, time.perf_counter() - started))

        before = ServerStats.take(r)
        started = time.perf_counter()
        for offset in range(0, n, BATCH):
            pipe = r.pipeline(transaction=False)
            for _ in range(min(BATCH, n - offset)):
                pipe.xadd(RAW_STREAM, RAW_FIELDS)
            pipe.execute()
        res.put("raw_xadd_pipelined_rate", _rate(n, time.perf_counter() - started))

        r.xgroup_create(RAW_STREAM, "g", id="0")
        started, cpu = time.perf_counter(), time.process_time()
        got = 0
        while got < n:
            reply = r.xreadgroup("g", "c", {RAW_STREAM: ">"}, count=BATCH)
            if not reply:
                break
            ids = []
            for entry_id, fields in stream_entries(reply[0][1]):  # type: ignore[index]
                _noop(**json.loads(fields[b"body"])["kwargs"])
                ids.append(entry_id)
            pipe = r.pipeline(transaction=False)
            pipe.xack(RAW_STREAM, "g", *ids)
            pipe.execute()
            got += len(ids)
        took, cpu = time.perf_counter() - started, time.process_time() - cpu
        calls, server_cpu = ServerStats.take(r).since(before)
        pending = r.xpending(RAW_STREAM, "g")["pending"]
        r.close()
    res.put("raw_consume_rate", _rate(got, took), n, got - pending)
    res.put("raw_consume_cpu_us", cpu / max(got, 1) * 1e6)
    res.put("raw_commands_per_msg", sum(calls.values()) / n)
    res.put("raw_server_us_per_msg", server_cpu / n * 1e6)
    res.commands["raw"] = per_task(calls, n)


def _noop() -> None:
    return None


def bind(task: Task, client: Client) -> Task:
    """The same task (name, topic, group) on an app that sends through `client`."""
    return App(client).task(task.fn, name=task.name, topic=task.topic, group=task.group)


def _client(url: str, topic: str) -> Client:
    client = Client(url, namespace=NAMESPACE)
    client.create_topic(topic, QUEUES)
    return client


def bench_send(res: Results, n: int) -> None:
    """redismq `Task.send`, one round trip per message."""
    from cli.bench_app import TOPIC, noop

    with LocalServer() as srv:
        client = _client(srv.url, TOPIC)
        task = bind(noop, client)
        task.send()  # connect and load the topic before timing
        started = time.perf_counter()
        for _ in range(n):
            task.send()
        res.put("send_rate", _rate(n, time.perf_counter() - started))
        client.close()


def done_window(client: Client, topic: str, queues: int) -> Window:
    """The completions recorded in the group's done sets of every queue (scores in ms)."""
    r = client.meta
    keys = [QueueKeys(NAMESPACE, topic, q).done(GROUP) for q in range(queues)]
    pipe = r.pipeline(transaction=False)
    for k in keys:
        pipe.zcard(k)
        pipe.zrange(k, 0, 0, withscores=True)
        pipe.zrange(k, -1, -1, withscores=True)
    replies = pipe.execute()
    completed = sum(replies[0::3])
    firsts = [s for reply in replies[1::3] for _, s in reply]
    lasts = [s for reply in replies[2::3] for _, s in reply]
    if not firsts:
        return Window(0.0, 0.0, 0, 0)
    first, last = min(firsts), max(lasts)
    at_first = sum(r.zcount(k, first, first) for k in keys)
    return Window(first / 1000, last / 1000, completed, at_first)


def bench_drain(res: Results, n: int, processes: int) -> None:
    """send_many N no-op tasks, then a worker (1 or 2 processes, --burst) drains them."""
    from cli.bench_app import TOPIC, noop

    with LocalServer() as srv:
        client = _client(srv.url, TOPIC)
        task = bind(noop, client)
        body = task.body()
        before = ServerStats.take(client.meta)
        started = time.perf_counter()
        for offset in range(0, n, BATCH):
            client.send_many(TOPIC, [body] * min(BATCH, n - offset))
        send_many = _rate(n, time.perf_counter() - started)
        args = ["-m", "cli.main", "worker", "cli.bench_app:app", "--url", srv.url]
        args += ["--topic", TOPIC, "--processes", str(processes), "--burst"]
        args += ["--log-level", "WARNING"]
        started = time.monotonic()
        with worker_process(args, srv.url) as proc:
            fin = wait_measured(proc, started, _timeout(n, 0.01))
        _check_exit(f"the worker (--processes {processes})", fin)
        calls, server_cpu = ServerStats.take(client.meta).since(before)
        window = done_window(client, TOPIC, QUEUES)
        client.close()
    rate, cpu_us, steady_cpu = steady(window, fin)
    res.runs[f"redismq_worker_{processes}"] = run_record(fin, window, n, steady_cpu)
    res.put(f"worker{processes}_rate", rate, n, window.completed)
    res.put(f"worker{processes}_cpu_us", cpu_us, n, window.completed)
    if processes == 1:
        res.put("send_many_rate", send_many)
        res.put("commands_per_task", sum(calls.values()) / max(window.completed, 1))
        res.put("server_us_per_task", server_cpu / max(window.completed, 1) * 1e6)
        res.commands["redismq"] = per_task(calls, max(window.completed, 1))
    if not steady_cpu:
        res.notes.append(
            f"worker{processes}_cpu_us counts the whole process (start-up included): "
            "no steady-state CPU samples (is psutil installed?)"
        )


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def probe_latency(
    r: redis.Redis,
    send: Callable[[float], object],
    sends: int,
    proc: subprocess.Popen[bytes],
    gap: float = LATENCY_GAP,
) -> list[float]:
    """Warm up, then `sends` probes `gap` seconds apart; the send → start delays in ms."""
    from cli.bench_app import LATENCY_LIST

    def wait_for(count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while r.llen(LATENCY_LIST) < count:
            if proc.poll() is not None:
                raise BenchError(f"the latency worker exited early:\n{_log_tail(proc)}")
            if time.monotonic() > deadline:
                raise BenchError(
                    f"only {r.llen(LATENCY_LIST)} of {count} latency probes started "
                    f"within {timeout:.0f}s:\n{_log_tail(proc)}"
                )
            time.sleep(0.01)

    send(time.time())  # the worker is ready once this one has run
    wait_for(1, 60.0)
    r.delete(LATENCY_LIST)
    started = time.perf_counter()
    for i in range(sends):
        send(time.time())
        pause = started + (i + 1) * gap - time.perf_counter()
        if pause > 0:
            time.sleep(pause)
    wait_for(sends, 30.0)
    return [(start - sent) * 1000 for sent, start in map(json.loads, r.lrange(LATENCY_LIST, 0, -1))]


def bench_latency(res: Results, sends: int) -> None:
    """A running redismq worker on an idle queue: when do probes start after their send?"""
    from cli.bench_app import LATENCY_TOPIC, record_start

    with LocalServer() as srv:
        client = _client(srv.url, LATENCY_TOPIC)
        task = bind(record_start, client)
        args = ["-m", "cli.main", "worker", "cli.bench_app:app", "--url", srv.url]
        args += ["--topic", LATENCY_TOPIC, "--processes", "1", "--log-level", "WARNING"]
        with worker_process(args, srv.url) as proc:
            delays = probe_latency(client.meta, task.send, sends, proc)
        client.close()
    res.put("latency_p50_ms", percentile(delays, 50), sends, len(delays))
    res.put("latency_p99_ms", percentile(delays, 99), sends, len(delays))


def _rq() -> Any:
    try:
        import rq
    except ImportError:
        raise BenchError("RQ is not installed: pip install rq") from None
    return rq


def _rq_time(raw: bytes | None) -> float | None:
    if not raw:
        return None
    text = raw.decode()
    for fmt in ("%Y-%m-%dT%H:%M:%S.%fZ", "%Y-%m-%dT%H:%M:%SZ"):
        with contextlib.suppress(ValueError):
            return datetime.strptime(text, fmt).replace(tzinfo=UTC).timestamp()
    return None


def rq_window(r: redis.Redis, job_ids: list[str]) -> Window:
    """The completions of RQ jobs, from each finished job's `ended_at`."""
    ended: list[float] = []
    for offset in range(0, len(job_ids), 1000):
        pipe = r.pipeline(transaction=False)
        for jid in job_ids[offset : offset + 1000]:
            pipe.hmget(f"rq:job:{jid}", "status", "ended_at")
        for status, ended_at in pipe.execute():
            t = _rq_time(ended_at)
            if status == b"finished" and t is not None:
                ended.append(t)
    if not ended:
        return Window(0.0, 0.0, 0, 0)
    first = min(ended)
    return Window(first, max(ended), len(ended), sum(1 for t in ended if t == first))


def rq_worker_args(url: str, kind: str, burst: bool) -> list[str]:
    return ["-m", "cli.bench", "rq-worker", url, kind, *(["--burst"] if burst else [])]


def bench_rq_drain(res: Results, n: int, kind: str) -> None:
    """RQ: enqueue one by one, then its SimpleWorker or forking Worker drains (burst)."""
    rq = _rq()
    from cli.bench_app import rq_noop

    with LocalServer() as srv:
        r = redis.Redis.from_url(srv.url)
        queue = rq.Queue(RQ_QUEUE, connection=r)
        r.ping()
        before = ServerStats.take(r)
        started = time.perf_counter()
        job_ids = [queue.enqueue(rq_noop).id for _ in range(n)]
        enqueue = _rate(n, time.perf_counter() - started)
        started = time.monotonic()
        with worker_process(rq_worker_args(srv.url, kind, burst=True), srv.url) as proc:
            fin = wait_measured(proc, started, _timeout(n, 0.2 if kind == "fork" else 0.02))
        _check_exit(f"RQ's {kind} worker", fin)
        calls, server_cpu = ServerStats.take(r).since(before)
        window = rq_window(r, job_ids)
        r.close()
    rate, cpu_us, steady_cpu = steady(window, fin)
    res.runs[f"rq_{kind}"] = run_record(fin, window, n, steady_cpu)
    res.put(f"rq_{kind}_rate", rate, n, window.completed)
    res.put(f"rq_{kind}_cpu_us", cpu_us, n, window.completed)
    if kind == "simple":
        res.put("rq_enqueue_rate", enqueue)
        res.put("rq_commands_per_task", sum(calls.values()) / max(window.completed, 1))
        res.put("rq_server_us_per_task", server_cpu / max(window.completed, 1) * 1e6)
        res.commands["rq"] = per_task(calls, max(window.completed, 1))


def bench_rq_latency(res: Results, sends: int) -> None:
    """A running RQ SimpleWorker on an idle queue: when do probes start after enqueue?"""
    rq = _rq()
    from cli.bench_app import rq_record_start

    with LocalServer() as srv:
        r = redis.Redis.from_url(srv.url)
        queue = rq.Queue(RQ_QUEUE, connection=r)
        with worker_process(rq_worker_args(srv.url, "simple", burst=False), srv.url) as proc:
            delays = probe_latency(
                r, lambda t: queue.enqueue(rq_record_start, t), sends, proc, RQ_LATENCY_GAP
            )
        r.close()
    res.put("rq_latency_p50_ms", percentile(delays, 50), sends, len(delays))
    res.put("rq_latency_p99_ms", percentile(delays, 99), sends, len(delays))


def run_bench(
    jobs: int | None = None, quick: bool = False, progress: Console | None = None
) -> dict[str, Any]:
    """Run every scenario and return the report (see `report`)."""
    n = jobs or (QUICK_JOBS if quick else DEFAULT_JOBS)
    fork_jobs = min(n, RQ_FORK_JOBS_QUICK if quick else RQ_FORK_JOBS)
    sends = LATENCY_SENDS_QUICK if quick else LATENCY_SENDS
    res = Results(n, quick, fork_jobs, sends)
    steps: list[tuple[str, Callable[[], None]]] = [
        ("raw redis-py: XADD, pipelined XADD, XREADGROUP + XACK loop", lambda: bench_raw(res, n)),
        ("redismq: Task.send one by one", lambda: bench_send(res, n)),
        ("redismq: send_many, 1 worker process", lambda: bench_drain(res, n, 1)),
        ("redismq: send_many, --processes 2", lambda: bench_drain(res, n, 2)),
        (f"redismq: idle-queue latency, {sends} probes", lambda: bench_latency(res, sends)),
        ("RQ: enqueue, SimpleWorker", lambda: bench_rq_drain(res, n, "simple")),
        (f"RQ: forking Worker, {fork_jobs} jobs", lambda: bench_rq_drain(res, fork_jobs, "fork")),
        (f"RQ: idle-queue latency, {sends} probes", lambda: bench_rq_latency(res, sends)),
    ]
    for i, (what, step) in enumerate(steps, 1):
        started = time.monotonic()
        if progress is not None:
            progress.print(f"[{i}/{len(steps)}] {what} …")
        step()
        if progress is not None:
            progress.print(f"      done in {time.monotonic() - started:.1f}s")
    res.notes += [
        f"Each scenario runs on a fresh local server. redismq: a topic of {QUEUES} queues, "
        f"worker default --concurrency {CONCURRENCY}, --log-level WARNING; raw redis-py: one "
        "stream; RQ: one queue, logging at WARNING.",
        "Drain rates and worker CPU are steady state: from the first to the last completion "
        "the queue recorded (start-up and burst exit excluded); CPU is the worker process "
        "tree's.",
        *(
            [f"RQ's forking Worker drains {fork_jobs:,} jobs (not {n:,}): it forks once per job."]
            if fork_jobs < n
            else []
        ),
        "Redis commands count those run inside Lua scripts; Redis CPU is used_cpu_user + "
        "used_cpu_sys; both span sending and draining.",
        *(
            f"Redis commands per task, {who}: {top_commands(res.commands[who])}"
            for who in ("redismq", "rq")
            if who in res.commands
        ),
        "Other work on this machine makes the figures noisy; targets are shown, not enforced.",
        *(
            [
                f"--quick: {n:,} jobs are a smoke test; start-up (threads, groups, batch sizes "
                "ramping up) weighs on every per-task figure. Run without --quick to compare."
            ]
            if quick
            else []
        ),
    ]
    return report(res)


def top_commands(per_task: dict[str, float], count: int = 8) -> str:
    """The most frequent commands per task, as `name n, ...`."""
    shown = [f"{name.upper()} {n:.2f}" for name, n in list(per_task.items())[:count]]
    rest = sum(list(per_task.values())[count:])
    return ", ".join(shown + ([f"others {rest:.2f}"] if rest else []))


# --- the command --------------------------------------------------------------------


@click.command()
@click.option(
    "--jobs",
    type=click.IntRange(min=10),
    default=None,
    help=f"Tasks per throughput scenario [default: {DEFAULT_JOBS:,}; {QUICK_JOBS} with --quick].",
)
@click.option(
    "--quick",
    is_flag=True,
    help=(
        f"A smoke run: {QUICK_JOBS} jobs, {LATENCY_SENDS_QUICK} latency probes, "
        f"{RQ_FORK_JOBS_QUICK} jobs for RQ's forking worker."
    ),
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object with every figure.")
def bench(jobs: int | None, quick: bool, as_json: bool) -> None:
    """Measure redismq against raw redis-py and RQ, each on a fresh local server.

    Prints sending and draining rates, worker CPU per task, Redis commands and CPU per
    task and idle-queue latency, with their ratios and targets.

    Example: redismq bench --quick
    """
    from .bench_slow import bench_slow, print_slow

    err = Console(stderr=True, highlight=False)
    try:
        rep = run_bench(jobs, quick, progress=err)
        err.print("[slow jobs] sleeping tasks sent one by one, drained with --burst …")
        rep["slow"] = bench_slow(quick)
    except (RedisMQError, BenchError, redis.RedisError) as exc:
        err.print(Text.assemble(("error:", "red"), " ", str(exc)), soft_wrap=True)
        sys.exit(1)
    if as_json:
        click.echo(json.dumps(rep, indent=2, ensure_ascii=False))
    else:
        console = Console(highlight=False, width=None if sys.stdout.isatty() else 150)
        print_report(rep, console)
        print_slow(rep["slow"], console)


# --- RQ's worker, as a subprocess ---------------------------------------------------


def rq_worker_main(argv: list[str]) -> int:
    """`python -m cli.bench rq-worker URL simple|fork [--burst]`: run an RQ worker."""
    if len(argv) < 3 or argv[0] != "rq-worker" or argv[2] not in ("simple", "fork"):
        print("usage: python -m cli.bench rq-worker URL simple|fork [--burst]", file=sys.stderr)
        return 2
    rq = _rq()
    url, kind, burst = argv[1], argv[2], "--burst" in argv[3:]
    conn = redis.Redis.from_url(url)
    cls = rq.SimpleWorker if kind == "simple" else rq.Worker
    worker = cls([rq.Queue(RQ_QUEUE, connection=conn)], connection=conn)
    worker.work(burst=burst, logging_level="WARNING")
    return 0


if __name__ == "__main__":
    sys.exit(rq_worker_main(sys.argv[1:]))
