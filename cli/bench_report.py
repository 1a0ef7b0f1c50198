"""What `redismq bench` reports: each figure with its unit, target and baselines (`SPECS`),
the measured values (`Results`), the report built from them and its printing."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.table import Table

NAMESPACE = "rmq"
QUEUES = 4
CONCURRENCY = 8  # the worker command's default --concurrency, which the bench keeps
RQ_QUEUE = "bench"
LATENCY_GAP = 0.005
# RQ needs ~5 ms per job here: probes 5 ms apart would queue up behind each other, so
# they are spaced enough to find its queue idle.
RQ_LATENCY_GAP = 0.025
IDLE_CONCURRENCY = 200  # the idle worker's fetch threads
PROCESSES_TARGET = 1.7  # what two worker processes should drain, as a multiple of one
SEND_TARGET = 0.9  # a Task.send one by one, as a multiple of a raw XADD's rate
LATENCY_TARGET = 0.6  # redismq's idle p50, as a multiple of huey's


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
PEERS = "peers (huey, Dramatiq) when installed"

SPECS: tuple[Spec, ...] = (
    Spec("raw_xadd_rate", RAW, "XADD one by one", "msg/s", short="raw XADD"),
    Spec(
        "send_raw_xadd_rate",
        RAW,
        "XADD one by one, in turns with Task.send on its server",
        "msg/s",
        short="raw XADD in turns",
    ),
    Spec(
        "raw_xadd_pipelined_rate",
        RAW,
        "XADD pipelined, batches of 100",
        "msg/s",
        short="raw pipelined XADD",
    ),
    Spec(
        "raw_xadd_server_us",
        RAW,
        "  Redis time per XADD in those turns (INFO commandstats)",
        "µs",
        short="an XADD",
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
        "raw_latency_p50_ms",
        RAW,
        f"idle stream, XADD → a blocked XREADGROUP's consumer starts, p50 "
        f"({LATENCY_GAP * 1000:g} ms apart)",
        "ms",
        short="raw XREADGROUP (the floor)",
    ),
    Spec(
        "raw_latency_p99_ms",
        RAW,
        f"idle stream, XADD → a blocked XREADGROUP's consumer starts, p99 "
        f"({LATENCY_GAP * 1000:g} ms apart)",
        "ms",
        short="raw XREADGROUP (the floor)",
    ),
    Spec(
        "send_rate",
        RMQ,
        "Task.send one by one (in turns with raw XADD: raw, send, send, raw)",
        "msg/s",
        short="redismq send",
        ratios=(("send_raw_xadd_rate", Target(">=", SEND_TARGET)),),
    ),
    Spec(
        "send_server_us",
        RMQ,
        "  Redis time per Task.send: its script (INFO commandstats)",
        "µs",
        ratios=(("raw_xadd_server_us", None),),
    ),
    Spec(
        "send_many_rate",
        RMQ,
        "Client.send_many, batches of 100",
        "msg/s",
        ratios=(("raw_xadd_pipelined_rate", Target(">=", 0.8)),),
    ),
    Spec(
        "worker1_rate",
        RMQ,
        "1 worker process draining (--burst)",
        "tasks/s",
        short="redismq 1 process",
        ratios=(
            ("raw_consume_rate", Target(">=", 0.5)),
            ("rq_simple_rate", Target(">=", 100)),
            ("best_peer_rate", Target(">=", 15)),
        ),
    ),
    Spec(
        "worker1_default_rate",
        RMQ,
        "1 worker process draining, default flags (a log line per job)",
        "tasks/s",
        ratios=(("best_peer_rate", Target(">=", 15)),),
    ),
    Spec(
        "default_flags_share",
        RMQ,
        "default flags over WARNING: 4 drains in turn (W, default, default, W), rates summed",
        "×",
        target=Target(">=", 0.9),
    ),
    Spec("worker1_again_rate", RMQ, "  the second drain at WARNING (4th of the 4)", "tasks/s"),
    Spec(
        "worker1_default_again_rate",
        RMQ,
        "  the second drain with default flags (3rd of the 4)",
        "tasks/s",
    ),
    Spec(
        "worker1_default_cpu_us",
        RMQ,
        "worker CPU per task, 1 process, default flags",
        "µs",
        ratios=(("worker1_cpu_us", None),),
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
        ratios=(("worker1_rate", Target(">=", PROCESSES_TARGET)), ("raw_consume_rate", None)),
    ),
    Spec(
        "worker_peak_rss_mb",
        RMQ,
        "peak RSS of 1 worker process draining a deep queue (--memory-jobs)",
        "MB",
        target=Target("<", 100),
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
        "server_drain_us_per_task",
        RMQ,
        "  of which the worker's drain (read, check, settle)",
        "µs",
    ),
    Spec(
        "latency_p50_ms",
        RMQ,
        f"idle queue, send → start, p50 ({LATENCY_GAP * 1000:g} ms apart)",
        "ms",
        short="redismq",
        target=Target("<", 0.7),
        ratios=(
            ("huey_latency_p50_ms", Target("<=", LATENCY_TARGET)),
            ("raw_latency_p50_ms", None),
        ),
    ),
    Spec(
        "latency_p99_ms",
        RMQ,
        f"idle queue, send → start, p99 ({LATENCY_GAP * 1000:g} ms apart)",
        "ms",
        short="redismq",
        target=Target("<", 1.5),
        ratios=(("huey_latency_p99_ms", Target("<=", 1.0)), ("raw_latency_p99_ms", None)),
    ),
    Spec(
        "idle_worker_cpu_pct",
        RMQ,
        f"idle worker, --concurrency {IDLE_CONCURRENCY}: CPU (empty topic)",
        "% of a core",
    ),
    Spec(
        "idle_worker_calls_per_s",
        RMQ,
        f"idle worker, --concurrency {IDLE_CONCURRENCY}: Redis commands (scripts' included)",
        "cmd/s",
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
    *(
        spec
        for peer, name in (("huey", "huey"), ("dramatiq", "Dramatiq"))
        for spec in (
            Spec(
                f"{peer}_rate",
                PEERS,
                f"{name} worker draining (its defaults)",
                "tasks/s",
                short=name,
                ratios=(("worker1_rate", None),),
            ),
            Spec(
                f"{peer}_cpu_us",
                PEERS,
                f"{name} worker CPU per task",
                "µs",
                ratios=(("worker1_cpu_us", None),),
            ),
        )
    ),
    Spec(
        "huey_latency_p50_ms",
        PEERS,
        f"huey: idle queue, enqueue → start, p50 ({LATENCY_GAP * 1000:g} ms apart)",
        "ms",
        short="huey",
    ),
    Spec(
        "huey_latency_p99_ms",
        PEERS,
        f"huey: idle queue, enqueue → start, p99 ({LATENCY_GAP * 1000:g} ms apart)",
        "ms",
        short="huey",
    ),
    Spec(
        "best_peer_rate",
        PEERS,
        "the best peer's drain (RQ SimpleWorker, huey, Dramatiq)",
        "tasks/s",
        short="best peer",
        ratios=(("worker1_rate", None),),
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
    one_at_a_time_jobs: int
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
        "one_at_a_time_jobs": results.one_at_a_time_jobs,
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
            f"redismq bench: {rep['jobs']:,} tasks per drain, a topic of {rep['queues']} "
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
            "\n".join(target_lines).rstrip("\n"),  # leading blanks keep lines aligned
        )
    console.print(table)


def top_commands(per_task: dict[str, float], count: int = 8) -> str:
    """The most frequent commands per task, as `name n, ...`."""
    shown = [f"{name.upper()} {n:.2f}" for name, n in list(per_task.items())[:count]]
    rest = sum(list(per_task.values())[count:])
    return ", ".join(shown + ([f"others {rest:.2f}"] if rest else []))
