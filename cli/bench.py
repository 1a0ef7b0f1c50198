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

Run `python -m redismq.cli.bench_rq rq-worker URL simple|fork [--burst]` to start the RQ worker the
bench uses.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import click
import redis
from rich.console import Console
from rich.text import Text

from redismq import RedisMQError

from .bench_bounds import bound_of_latency, bound_of_processes, bound_of_send
from .bench_measure import BenchError
from .bench_peers import best_peer, peer_steps
from .bench_report import (
    CONCURRENCY,
    QUEUES,
    Results,
    print_report,
    report,
    top_commands,
)
from .bench_rq import bench_rq_drain, bench_rq_latency
from .bench_scenarios import (
    bench_drain,
    bench_idle,
    bench_latency,
    bench_memory,
    bench_raw,
    bench_raw_latency,
    bench_send,
    flags_share,
)

RQ_FORK_JOBS = 500
RQ_FORK_JOBS_QUICK = 100
# redismq drains ~100,000 tasks/s on a fast machine: a drain of this many lasts about a
# second, long enough for its rate and its CPU (sampled every 20 ms) to hold still.
DEFAULT_JOBS = 100_000
# What is sent or run one at a time (sends one by one, RQ's SimpleWorker, huey, Dramatiq)
# goes at most 10,000 a second: this many already take seconds.
ONE_AT_A_TIME_JOBS = 20_000
QUICK_JOBS = 500
LATENCY_SENDS = 500
LATENCY_SENDS_QUICK = 50
MEMORY_JOBS = 1_000_000
MEMORY_JOBS_QUICK = 2_000
IDLE_SECONDS = 5.0
IDLE_SECONDS_QUICK = 2.0


def run_bench(
    jobs: int | None = None,
    quick: bool = False,
    progress: Console | None = None,
    memory_jobs: int | None = None,
) -> dict[str, Any]:
    """Run every scenario and return the report (see `report`)."""
    n = jobs or (QUICK_JOBS if quick else DEFAULT_JOBS)
    deep = (MEMORY_JOBS_QUICK if quick else MEMORY_JOBS) if memory_jobs is None else memory_jobs
    fork_jobs = min(n, RQ_FORK_JOBS_QUICK if quick else RQ_FORK_JOBS)
    one = min(n, ONE_AT_A_TIME_JOBS)
    sends = LATENCY_SENDS_QUICK if quick else LATENCY_SENDS
    idle = IDLE_SECONDS_QUICK if quick else IDLE_SECONDS
    res = Results(n, quick, fork_jobs, sends, one)
    steps: list[tuple[str, Callable[[], None]]] = [
        (
            "raw redis-py: XADD, pipelined XADD, XREADGROUP + XACK loop",
            lambda: bench_raw(res, n, one),
        ),
        ("redismq: Task.send one by one", lambda: bench_send(res, one)),
        ("redismq: send_many, 1 worker process", lambda: bench_drain(res, n, 1)),
        ("redismq: 1 worker process, default flags", lambda: bench_drain(res, n, 1, True)),
        (
            "redismq: 1 worker process, default flags, again",
            lambda: bench_drain(res, n, 1, True, again=True),
        ),
        ("redismq: 1 worker process, again", lambda: bench_drain(res, n, 1, again=True)),
        ("redismq: send_many, --processes 2", lambda: bench_drain(res, n, 2)),
        (
            f"raw redis-py: idle-stream latency (the floor), {sends} probes",
            lambda: bench_raw_latency(res, sends),
        ),
        (f"redismq: idle-queue latency, {sends} probes", lambda: bench_latency(res, sends)),
        ("redismq: an idle worker, --concurrency 200", lambda: bench_idle(res, idle)),
        *(
            [(f"redismq: memory draining {deep:,} queued tasks", lambda: bench_memory(res, deep))]
            if deep
            else []
        ),
        ("RQ: enqueue, SimpleWorker", lambda: bench_rq_drain(res, one, "simple")),
        (f"RQ: forking Worker, {fork_jobs} jobs", lambda: bench_rq_drain(res, fork_jobs, "fork")),
        (f"RQ: idle-queue latency, {sends} probes", lambda: bench_rq_latency(res, sends)),
        *peer_steps(res, one),
    ]
    for i, (what, step) in enumerate(steps, 1):
        started = time.monotonic()
        if progress is not None:
            progress.print(f"[{i}/{len(steps)}] {what} …")
        step()
        if progress is not None:
            progress.print(f"      done in {time.monotonic() - started:.1f}s")
    best_peer(res)
    flags_share(res)
    bound_of_processes(res, os.cpu_count())
    bound_of_send(res)
    bound_of_latency(res)
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
        *(
            [
                f"Sends one by one, RQ's SimpleWorker, huey and Dramatiq take {one:,} tasks "
                f"(not {n:,}): one at a time, they already take seconds."
            ]
            if one < n
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


# --- the command --------------------------------------------------------------------


@click.command()
@click.option(
    "--jobs",
    type=click.IntRange(min=10),
    default=None,
    help=(
        f"Tasks per drain [default: {DEFAULT_JOBS:,}; {QUICK_JOBS} with --quick]; sends one "
        f"by one and the peers' workers take at most {ONE_AT_A_TIME_JOBS:,}."
    ),
)
@click.option(
    "--quick",
    is_flag=True,
    help=(
        f"A smoke run: {QUICK_JOBS} jobs, {LATENCY_SENDS_QUICK} latency probes, "
        f"{RQ_FORK_JOBS_QUICK} jobs for RQ's forking worker."
    ),
)
@click.option(
    "--memory-jobs",
    type=click.IntRange(min=0),
    default=None,
    help=(
        f"Tasks queued before one worker drains them, for its peak memory "
        f"[default: {MEMORY_JOBS:,}; {MEMORY_JOBS_QUICK:,} with --quick; 0: not measured]."
    ),
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object with every figure.")
def bench(jobs: int | None, quick: bool, memory_jobs: int | None, as_json: bool) -> None:
    """Measure redismq against raw redis-py and RQ, each on a fresh local server.

    Prints sending and draining rates, worker CPU per task, Redis commands and CPU per
    task and idle-queue latency, with their ratios and targets.

    Example: redismq bench --quick
    """
    from .bench_slow import bench_slow, print_slow

    err = Console(stderr=True, highlight=False)
    try:
        rep = run_bench(jobs, quick, progress=err, memory_jobs=memory_jobs)
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
