"""The bench's scenarios for raw redis-py (the ceiling) and redismq: sending, draining
with worker processes, and idle-queue latency."""

from __future__ import annotations

import json
import math
import subprocess
import time
from collections.abc import Callable

import redis
from redis.typing import EncodableT, FieldT

from redismq import App, Client, Task
from redismq.keys import QueueKeys
from redismq.message import stream_entries
from redismq.server import LocalServer

from .bench_measure import (
    BenchError,
    CpuSampler,
    ServerStats,
    Window,
    check_exit,
    command_usec,
    log_tail,
    per_task,
    rate_of,
    run_record,
    server_name,
    steady,
    wait_measured,
    wait_timeout,
    worker_process,
)
from .bench_report import IDLE_CONCURRENCY, LATENCY_GAP, NAMESPACE, QUEUES, Results

GROUP = "workers"
BATCH = 100
MEMORY_BATCH = 1000
RAW_STREAM_ONE = "raw:one"
RAW_STREAM = "raw:stream"
# The fields of a raw entry: the shape (and size) of a redismq entry of a no-op task.
RAW_FIELDS: dict[FieldT, EncodableT] = {
    b"id": "0190f3c2a1b2c3d4e5f60718293a4b5c",
    b"body": b'{"task":"bench.noop","args":[],"kwargs":{}}',
    b"created": 1_700_000_000_000,
}


# --- scenarios ----------------------------------------------------------------------


def bench_raw(res: Results, n: int, one: int) -> None:
    """XADD one by one (`one` messages), XADD pipelined, and a bare consumer loop (`n`), with
    redis-py alone."""
    with LocalServer() as srv:
        res.server = server_name(srv)
        r = redis.Redis.from_url(srv.url)
        r.ping()
        started = time.perf_counter()
        for _ in range(one):
            r.xadd(RAW_STREAM_ONE, RAW_FIELDS)
        res.put("raw_xadd_rate", rate_of(one, time.perf_counter() - started))

        before = ServerStats.take(r)
        started = time.perf_counter()
        for offset in range(0, n, BATCH):
            pipe = r.pipeline(transaction=False)
            for _ in range(min(BATCH, n - offset)):
                pipe.xadd(RAW_STREAM, RAW_FIELDS)
            pipe.execute()
        res.put("raw_xadd_pipelined_rate", rate_of(n, time.perf_counter() - started))

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
    res.put("raw_consume_rate", rate_of(got, took), n, got - pending)
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
    """redismq `Task.send`, one round trip per message, and raw redis-py XADDs one by one on
    the same server in turns with it (raw, send, send, raw: the machine's speed drifts
    within a run), `n` messages each time."""
    from redismq.cli.bench_app import TOPIC, noop

    with LocalServer() as srv:
        client = _client(srv.url, TOPIC)
        task = bind(noop, client)
        task.send()  # connect and load the topic before timing
        r = redis.Redis.from_url(srv.url)
        r.ping()
        took = {"raw": 0.0, "send": 0.0}
        server = {"raw": 0.0, "send": 0.0}  # µs of Redis time in the command that writes
        for kind in ("raw", "send", "send", "raw"):
            command = "xadd" if kind == "raw" else "evalsha"
            before = command_usec(r, command)
            started = time.perf_counter()
            if kind == "raw":
                for _ in range(n):
                    r.xadd(RAW_STREAM_ONE, RAW_FIELDS)
            else:
                for _ in range(n):
                    task.send()
            took[kind] += time.perf_counter() - started
            server[kind] += command_usec(r, command) - before
        res.put("send_rate", rate_of(2 * n, took["send"]))
        res.put("send_raw_xadd_rate", rate_of(2 * n, took["raw"]))
        res.put("send_server_us", server["send"] / (2 * n))
        res.put("raw_xadd_server_us", server["raw"] / (2 * n))
        r.close()
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


def drain_args(url: str, processes: int, default_flags: bool = False) -> list[str]:
    """The worker command that drains the bench topic and exits (--burst)."""
    from redismq.cli.bench_app import TOPIC

    args = ["-m", "redismq.cli.main", "worker", "redismq.cli.bench_app:app", "--url", url]
    args += ["--topic", TOPIC, "--processes", str(processes), "--burst"]
    return args + ([] if default_flags else ["--log-level", "WARNING"])


def bench_memory(res: Results, n: int) -> None:
    """N no-op tasks queued first (a deep backlog), then one worker process drains them:
    the peak resident memory of its largest process."""
    from redismq.cli.bench_app import TOPIC, noop

    with LocalServer() as srv:
        client = _client(srv.url, TOPIC)
        body = bind(noop, client).body()
        for offset in range(0, n, MEMORY_BATCH):
            client.send_many(TOPIC, [body] * min(MEMORY_BATCH, n - offset))
        started = time.monotonic()
        with worker_process(drain_args(srv.url, 1), srv.url) as proc:
            fin = wait_measured(proc, started, wait_timeout(n, 0.01))
        check_exit("the worker draining a deep queue", fin)
        done = done_window(client, TOPIC, QUEUES).completed
        client.close()
    res.put("worker_peak_rss_mb", fin.peak_rss_mb, n, done)


def bench_drain(
    res: Results, n: int, processes: int, default_flags: bool = False, again: bool = False
) -> None:
    """send_many N no-op tasks, then a worker (1 or 2 processes, --burst) drains them,
    logging at WARNING (or, `default_flags`, with the worker's defaults: a line per job).
    `again`: the second drain of its kind (see `flags_share`)."""
    from redismq.cli.bench_app import TOPIC, noop

    name = (
        f"worker{processes}" + ("_default" if default_flags else "") + ("_again" if again else "")
    )
    with LocalServer() as srv:
        client = _client(srv.url, TOPIC)
        task = bind(noop, client)
        body = task.body()
        before = ServerStats.take(client.meta)
        started = time.perf_counter()
        for offset in range(0, n, BATCH):
            client.send_many(TOPIC, [body] * min(BATCH, n - offset))
        send_many = rate_of(n, time.perf_counter() - started)
        sent = ServerStats.take(client.meta)
        args = drain_args(srv.url, processes, default_flags)
        started = time.monotonic()
        with worker_process(args, srv.url) as proc:
            fin = wait_measured(proc, started, wait_timeout(n, 0.01))
        check_exit(f"the worker ({name})", fin)
        drained = ServerStats.take(client.meta)
        calls, server_cpu = drained.since(before)
        drain_cpu = drained.since(sent)[1]
        window = done_window(client, TOPIC, QUEUES)
        client.close()
    rate, cpu_us, steady_cpu = steady(window, fin)
    res.runs[f"redismq_{name}"] = run_record(fin, window, n, steady_cpu)
    res.put(f"{name}_rate", rate, n, window.completed)
    if again:
        return
    res.put(f"{name}_cpu_us", cpu_us, n, window.completed)
    if name == "worker1":
        res.put("send_many_rate", send_many)
        res.put("commands_per_task", sum(calls.values()) / max(window.completed, 1))
        res.put("server_us_per_task", server_cpu / max(window.completed, 1) * 1e6)
        res.put("server_drain_us_per_task", drain_cpu / max(window.completed, 1) * 1e6)
        res.commands["redismq"] = per_task(calls, max(window.completed, 1))
    if not steady_cpu:
        res.notes.append(
            f"{name}_cpu_us counts the whole process (start-up included): "
            "no steady-state CPU samples (is psutil installed?)"
        )


def flags_share(res: Results) -> None:
    """Default flags over --log-level WARNING, from the four drains run in turn (WARNING,
    default, default, WARNING): the load of the machine drifts over a run, and both kinds'
    drains have the same mean moment."""
    default = (
        res.values["worker1_default_rate"].value + res.values["worker1_default_again_rate"].value
    )
    warning = res.values["worker1_rate"].value + res.values["worker1_again_rate"].value
    res.put("default_flags_share", default / warning)


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
    from redismq.cli.bench_app import LATENCY_LIST

    def wait_for(count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while r.llen(LATENCY_LIST) < count:
            if proc.poll() is not None:
                raise BenchError(f"the latency worker exited early:\n{log_tail(proc)}")
            if time.monotonic() > deadline:
                raise BenchError(
                    f"only {r.llen(LATENCY_LIST)} of {count} latency probes started "
                    f"within {timeout:.0f}s:\n{log_tail(proc)}"
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
    from redismq.cli.bench_app import LATENCY_TOPIC, record_start

    with LocalServer() as srv:
        client = _client(srv.url, LATENCY_TOPIC)
        task = bind(record_start, client)
        args = ["-m", "redismq.cli.main", "worker", "redismq.cli.bench_app:app", "--url", srv.url]
        args += ["--topic", LATENCY_TOPIC, "--processes", "1", "--log-level", "WARNING"]
        with worker_process(args, srv.url) as proc:
            delays = probe_latency(client.meta, task.send, sends, proc)
        client.close()
    res.put("latency_p50_ms", percentile(delays, 50), sends, len(delays))
    res.put("latency_p99_ms", percentile(delays, 99), sends, len(delays))


def bench_raw_latency(res: Results, sends: int) -> None:
    """The floor of idle latency: a bare redis-py consumer blocked in XREADGROUP on an idle
    stream (`bench_app.raw_latency_consumer`): when do probes start after their XADD?"""
    from redismq.cli.bench_app import RAW_LATENCY_GROUP, RAW_LATENCY_STREAM

    with LocalServer() as srv:
        r = redis.Redis.from_url(srv.url)
        r.xgroup_create(RAW_LATENCY_STREAM, RAW_LATENCY_GROUP, id="$", mkstream=True)

        def send(sent_at: float) -> None:
            body = json.dumps({"task": "bench.record_start", "args": [sent_at], "kwargs": {}})
            r.xadd(RAW_LATENCY_STREAM, {"body": body})

        code = "from redismq.cli.bench_app import raw_latency_consumer; raw_latency_consumer()"
        with worker_process(["-c", code], srv.url) as proc:
            delays = probe_latency(r, send, sends, proc)
        r.close()
    res.put("raw_latency_p50_ms", percentile(delays, 50), sends, len(delays))
    res.put("raw_latency_p99_ms", percentile(delays, 99), sends, len(delays))


def bench_idle(res: Results, seconds: float) -> None:
    """A worker at --concurrency IDLE_CONCURRENCY on an empty topic, once its fetch
    threads all wait: the CPU it takes and the Redis commands it makes over `seconds`."""
    from redismq.cli.bench_app import TOPIC

    with LocalServer() as srv:
        client = _client(srv.url, TOPIC)
        args = ["-m", "redismq.cli.main", "worker", "redismq.cli.bench_app:app", "--url", srv.url]
        args += ["--topic", TOPIC, "--processes", "1", "--log-level", "WARNING"]
        args += ["--concurrency", str(IDLE_CONCURRENCY)]
        stream = client.router.queue_keys(TOPIC, 0).stream
        with worker_process(args, srv.url) as proc:
            deadline = time.monotonic() + 60
            while _consumers(client, stream) < IDLE_CONCURRENCY:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise BenchError(f"the idle worker did not start:\n{log_tail(proc)}")
                time.sleep(0.1)
            time.sleep(1.0)  # its threads' first reads
            sampler = CpuSampler(proc.pid)
            sampler.sample()
            before = ServerStats.take(client.meta)
            time.sleep(seconds)
            sampler.sample()
            calls, _ = ServerStats.take(client.meta).since(before)
        client.close()
    (start, cpu0), (end, cpu1) = sampler.samples[0], sampler.samples[-1]
    res.put("idle_worker_cpu_pct", 100 * (cpu1 - cpu0) / (end - start))
    res.put("idle_worker_calls_per_s", sum(calls.values()) / (end - start))


def _consumers(client: Client, stream: str) -> int:
    """How many consumers the bench group has on a stream (0 before it exists)."""
    try:
        return len(client.meta.xinfo_consumers(stream, GROUP))
    except redis.ResponseError:
        return 0
