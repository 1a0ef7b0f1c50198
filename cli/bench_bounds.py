"""What bounds the goals a bench run missed, said in its notes: two processes, the send one
by one, and idle latency, each from figures measured in the same run."""

from __future__ import annotations

from .bench_report import LATENCY_TARGET, PROCESSES_TARGET, SEND_TARGET, Results


def bound_of_processes(res: Results, cores: int | None) -> None:
    """Say what bounds `--processes 2` where the machine cannot give it 1.7× one process:
    the CPU a task takes, worker's and Redis's, over the cores, and Redis's one thread."""
    v = res.values
    names = ("worker1_rate", "worker1_cpu_us", "server_drain_us_per_task")
    if not cores or not all(n in v for n in names):
        return
    worker, server = v["worker1_cpu_us"].value, v["server_drain_us_per_task"].value
    by_cores, by_redis = cores / (worker + server) * 1e6, 1e6 / server
    one = v["worker1_rate"].value
    if min(by_cores, by_redis) >= PROCESSES_TARGET * one:
        return
    res.notes.append(
        f"What bounds --processes 2: a task takes {worker:.1f} µs of worker CPU and "
        f"{server:.1f} µs of Redis CPU. {cores} cores drain at most {by_cores:,.0f} tasks/s "
        f"({by_cores / one:.2f}× one process), and Redis, on one thread, at most "
        f"{by_redis:,.0f} ({by_redis / one:.2f}×), however many processes run. "
        f"{PROCESSES_TARGET:g}× needs a core for each process and Redis under "
        f"{1e6 / (PROCESSES_TARGET * one):.1f} µs per task."
    )


def bound_of_send(res: Results) -> None:
    """Say what bounds `Task.send` against a raw XADD in turns where it misses its target:
    the Redis time its script takes beyond an XADD's, and the client's part."""
    v = res.values
    names = ("send_rate", "send_raw_xadd_rate", "send_server_us", "raw_xadd_server_us")
    if not all(n in v for n in names):
        return
    raw, send = 1e6 / v["send_raw_xadd_rate"].value, 1e6 / v["send_rate"].value
    if raw / send >= SEND_TARGET:
        return
    script, xadd = v["send_server_us"].value, v["raw_xadd_server_us"].value
    beyond = max(script - xadd, 0.0)
    ceiling = raw / (raw + beyond)
    res.notes.append(
        f"What bounds Task.send: in turns a raw XADD takes {raw:.1f} µs and a send "
        f"{send:.1f} µs. Its script (the entry, its id's index, the look for that index "
        f"that makes a retried send a no-op: one atomic step) takes {script:.1f} µs of Redis "
        f"time against an XADD's {xadd:.1f}; that alone keeps a send at most {ceiling:.2f}× "
        f"the raw XADD at this round trip. The other {send - raw - beyond:.1f} µs are the "
        f"client's and the wire's (a larger request to send, read and parse). "
        f"{SEND_TARGET:g}× needs a send under {raw / SEND_TARGET:.1f} µs."
    )


def bound_of_latency(res: Results) -> None:
    """Say what bounds idle latency where its p50 misses its target against huey's: the
    floor a bare redis-py consumer blocked in XREADGROUP measured in the same run."""
    v = res.values
    names = ("latency_p50_ms", "huey_latency_p50_ms", "raw_latency_p50_ms")
    if not all(n in v for n in names):
        return
    ours, huey, floor = (v[n].value for n in names)
    goal = LATENCY_TARGET * huey
    if ours <= goal:
        return
    where = (
        f"below that floor by {floor - goal:.2f} ms"
        if goal < floor
        else f"{goal - floor:.2f} ms above that floor"
    )
    res.notes.append(
        f"What bounds idle latency: a bare redis-py consumer blocked in XREADGROUP starts "
        f"a probe {floor:.2f} ms after its XADD (p50); redismq takes {ours:.2f} ms, "
        f"{ours - floor:.2f} ms more (its send script, the wake's verdict, the job's "
        f"start). {LATENCY_TARGET:g}× huey's {huey:.2f} ms is {goal:.2f} ms, {where}."
    )
