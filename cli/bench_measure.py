"""How the bench measures: the server's command and CPU counts, worker subprocesses and
their CPU (sampled), and the steady-state window of a drain."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from redismq.process import die_with_parent
from redismq.server import LocalServer

from .bench_report import NAMESPACE

ROOT = Path(__file__).resolve().parent.parent
SAMPLE_EVERY = 0.02


class BenchError(Exception):
    """A scenario could not run to its end (a worker failed, a wait timed out)."""


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


def command_usec(r: redis.Redis, command: str) -> float:
    """The µs of Redis time one command has taken since the server started (INFO
    commandstats; a script's includes the commands it ran)."""
    stats = r.info("commandstats").get(f"cmdstat_{command}")
    return float(stats["usec"]) if stats else 0.0


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
    """A worker subprocess that ended: exit code, wall time, CPU (rusage) and samples, and
    the peak resident memory of its largest process (rusage: the supervisor or a child it
    reaped), in MB."""

    code: int
    wall: float
    cpu: float
    sampler: CpuSampler
    log: str
    peak_rss_mb: float = 0.0


def _env(url: str) -> dict[str, str]:
    path = os.environ.get("PYTHONPATH")
    return {
        **os.environ,
        "REDISMQ_URL": url,
        "REDISMQ_NAMESPACE": NAMESPACE,
        "PYTHONPATH": f"{ROOT}{os.pathsep}{path}" if path else str(ROOT),
    }


@contextlib.contextmanager
def worker_process(
    args: list[str], url: str, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """A worker subprocess (stderr to a temporary file; `env` added to its environment),
    stopped and reaped at the end."""
    parent = os.getpid()
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            [sys.executable, *args],
            cwd=ROOT,
            env={**_env(url), **(env or {})},
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


def log_tail(proc: subprocess.Popen[bytes], lines: int = 15) -> str:
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
                f"{log_tail(proc)}"
            )
        time.sleep(SAMPLE_EVERY)
    wall = time.monotonic() - started
    cpu = usage.ru_utime + usage.ru_stime
    peak_mb = usage.ru_maxrss / 1024  # KiB on Linux
    return Finished(proc.returncode, wall, cpu, sampler, log_tail(proc), peak_mb)


def check_exit(what: str, fin: Finished) -> None:
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


def wait_timeout(jobs: int, per_job: float) -> float:
    return 60.0 + jobs * per_job


def rate_of(n: int, seconds: float) -> float:
    """n per second."""
    return n / max(seconds, 1e-9)
