"""The bench's RQ scenarios, and the RQ worker they start:
`python -m redismq.cli.bench_rq rq-worker URL simple|fork [--burst]`."""

from __future__ import annotations

import contextlib
import sys
import time
from datetime import UTC, datetime
from typing import Any

import redis

from redismq.server import LocalServer

from .bench_measure import (
    BenchError,
    ServerStats,
    Window,
    check_exit,
    per_task,
    rate_of,
    run_record,
    steady,
    wait_measured,
    wait_timeout,
    worker_process,
)
from .bench_report import RQ_LATENCY_GAP, RQ_QUEUE, Results
from .bench_scenarios import percentile, probe_latency


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
    return ["-m", "redismq.cli.bench_rq", "rq-worker", url, kind, *(["--burst"] if burst else [])]


def bench_rq_drain(res: Results, n: int, kind: str) -> None:
    """RQ: enqueue one by one, then its SimpleWorker or forking Worker drains (burst)."""
    rq = _rq()
    from redismq.cli.bench_app import rq_noop

    with LocalServer() as srv:
        r = redis.Redis.from_url(srv.url)
        queue = rq.Queue(RQ_QUEUE, connection=r)
        r.ping()
        before = ServerStats.take(r)
        started = time.perf_counter()
        job_ids = [queue.enqueue(rq_noop).id for _ in range(n)]
        enqueue = rate_of(n, time.perf_counter() - started)
        started = time.monotonic()
        with worker_process(rq_worker_args(srv.url, kind, burst=True), srv.url) as proc:
            fin = wait_measured(proc, started, wait_timeout(n, 0.2 if kind == "fork" else 0.02))
        check_exit(f"RQ's {kind} worker", fin)
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
    from redismq.cli.bench_app import rq_record_start

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


# --- RQ's worker, as a subprocess ---------------------------------------------------


def rq_worker_main(argv: list[str]) -> int:
    """`python -m redismq.cli.bench_rq rq-worker URL simple|fork [--burst]`: run an RQ worker."""
    if len(argv) < 3 or argv[0] != "rq-worker" or argv[2] not in ("simple", "fork"):
        print(
            "usage: python -m redismq.cli.bench_rq rq-worker URL simple|fork [--burst]",
            file=sys.stderr,
        )
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
