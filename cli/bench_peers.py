"""The bench's peers beside RQ: huey and Dramatiq (when installed), draining the same no-op
task with their default worker settings, and the best of the peers.

Neither has a burst mode: the drain is timed by watching the queue from the outside, from
the first task taken to the queue found empty (Dramatiq: `broker.join`), and the worker is
stopped then.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import redis

from redismq.server import LocalServer

from .bench_measure import (
    BenchError,
    CpuSampler,
    Finished,
    Window,
    log_tail,
    run_record,
    steady,
    wait_timeout,
    worker_process,
)
from .bench_report import Results
from .bench_scenarios import percentile, probe_latency

PEERS = ("huey", "dramatiq")
POLL_EVERY = 0.02
HUEY_ARGS = ["-m", "huey.bin.huey_consumer", "redismq.cli.bench_peers_app.huey"]
HUEY_ARGS += ["--logfile", os.devnull]


def installed(peer: str) -> bool:
    return importlib.util.find_spec(peer) is not None


def watch_drain(
    proc: subprocess.Popen[bytes], queued: Callable[[], int], n: int, timeout: float
) -> tuple[Window, Finished]:
    """Poll the queue until it is empty; the window from the first task taken to then."""
    sampler = CpuSampler(proc.pid)
    started = time.monotonic()
    first = at_first = None
    while True:
        sampler.sample()
        left = queued()
        now = time.time()
        if first is None and left < n:
            first, at_first = now, n - left
        if left == 0:
            break
        if proc.poll() is not None:
            raise BenchError(f"the worker exited early:\n{log_tail(proc)}")
        if time.monotonic() - started > timeout:
            raise BenchError(f"{n - left} of {n} tasks drained in {timeout:.0f}s")
        time.sleep(POLL_EVERY)
    sampler.sample()
    # The worker still runs: its CPU so far, as sampled (0 without psutil).
    cpu = sampler.samples[-1][1] if sampler.samples else 0.0
    fin = Finished(0, time.monotonic() - started, cpu, sampler, "")
    return Window(first or now, now, n, at_first or n), fin


def bench_peer(res: Results, n: int, peer: str) -> None:
    """Send N no-op tasks to a peer, then run its worker (default settings) until drained."""
    from . import bench_peers_app as apps

    with LocalServer() as srv:
        env = {"REDISMQ_PEER": peer}
        if peer == "huey":
            h, noop, _ = apps.make_huey(srv.url)
            for _ in range(n):
                noop()
            args = HUEY_ARGS

            def queued() -> int:
                return int(h.pending_count())
        else:
            broker, actor = apps.make_dramatiq(srv.url)
            for _ in range(n):
                actor.send()
            args = ["-m", "dramatiq", "redismq.cli.bench_peers_app"]

            def queued() -> int:
                try:
                    broker.join(apps.DRAMATIQ_QUEUE, timeout=1)
                except Exception:  # noqa: BLE001 - not yet drained (dramatiq's QueueJoinTimeout)
                    return max(1, int(broker.client.llen(f"dramatiq:{apps.DRAMATIQ_QUEUE}")))
                return 0

        os.environ.update(env)
        try:
            with worker_process(args, srv.url) as proc:
                window, fin = watch_drain(proc, queued, n, wait_timeout(n, 0.05))
        finally:
            os.environ.pop("REDISMQ_PEER", None)
    rate, cpu_us, steady_cpu = steady(window, fin)
    res.runs[peer] = run_record(fin, window, n, steady_cpu)
    res.put(f"{peer}_rate", rate, n, window.completed)
    res.put(f"{peer}_cpu_us", cpu_us, n, window.completed)


def bench_huey_latency(res: Results, sends: int) -> None:
    """A running huey consumer (its defaults: it blocks on its Redis list) on an idle
    queue: when do probes start after their enqueue?"""
    from . import bench_peers_app as apps

    with LocalServer() as srv:
        _, _, probe = apps.make_huey(srv.url)
        r = redis.Redis.from_url(srv.url)
        os.environ["REDISMQ_PEER"] = "huey"
        try:
            with worker_process(HUEY_ARGS, srv.url) as proc:
                delays = probe_latency(r, probe, sends, proc)
        finally:
            os.environ.pop("REDISMQ_PEER", None)
        r.close()
    res.put("huey_latency_p50_ms", percentile(delays, 50), sends, len(delays))
    res.put("huey_latency_p99_ms", percentile(delays, 99), sends, len(delays))


def best_peer(res: Results) -> None:
    """The fastest peer's drain rate (RQ's SimpleWorker, huey, Dramatiq), as its own figure."""
    rates = {
        name: res.values[f"{name}_rate"].value
        for name in ("rq_simple", *PEERS)
        if f"{name}_rate" in res.values
    }
    if rates:
        best = max(rates, key=lambda k: rates[k])
        res.put("best_peer_rate", rates[best])
        res.notes.append(f"The best peer is {best}: {rates[best]:,.0f} tasks/s.")


def peer_steps(res: Results, n: int) -> list[tuple[str, Callable[[], None]]]:
    """The peers' steps of a bench run (those installed); notes the others."""
    steps: list[tuple[str, Callable[[], None]]] = []

    def step(peer: str) -> Callable[[], None]:
        return lambda: bench_peer(res, n, peer)

    def huey_latency() -> None:
        bench_huey_latency(res, res.latency_sends)

    for peer in PEERS:
        if installed(peer):
            steps.append((f"{peer}: enqueue, default worker", step(peer)))
            if peer == "huey":
                probes = f"{res.latency_sends} probes"
                steps.append((f"huey: idle-queue latency, {probes}", huey_latency))
        else:
            res.notes.append(f"{peer} is not installed (pip install {peer}): not measured.")
    return steps


__all__ = ["best_peer", "bench_huey_latency", "bench_peer", "peer_steps"]


def _main(argv: list[str]) -> Any:  # pragma: no cover - a manual run of one peer
    res = Results(int(argv[1]), False, 0, 0, int(argv[1]))
    bench_peer(res, int(argv[1]), argv[0])
    return {k: v.value for k, v in res.values.items()}


if __name__ == "__main__":
    print(_main(sys.argv[1:]))
