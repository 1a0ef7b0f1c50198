"""`redismq bench --quick`: it runs, and its numbers are consistent (never that they are fast)."""

from __future__ import annotations

import io
import json
import math
import operator
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from rich.console import Console

from redismq.cli.bench_bounds import bound_of_latency, bound_of_processes, bound_of_send
from redismq.cli.bench_report import (
    SPECS,
    Results,
    Target,
    _times,
    print_report,
)
from redismq.cli.bench_scenarios import percentile
from redismq.cli.main import main

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.bench

FIGURES = {
    "raw_xadd_rate",
    "raw_xadd_pipelined_rate",
    "raw_consume_rate",
    "raw_consume_cpu_us",
    "raw_commands_per_msg",
    "raw_server_us_per_msg",
    "raw_latency_p50_ms",
    "raw_latency_p99_ms",
    "send_rate",
    "send_raw_xadd_rate",
    "send_server_us",
    "raw_xadd_server_us",
    "send_many_rate",
    "worker1_rate",
    "worker1_cpu_us",
    "worker2_rate",
    "worker2_cpu_us",
    "commands_per_task",
    "server_us_per_task",
    "server_drain_us_per_task",
    "latency_p50_ms",
    "latency_p99_ms",
    "rq_enqueue_rate",
    "rq_simple_rate",
    "rq_simple_cpu_us",
    "rq_fork_rate",
    "rq_fork_cpu_us",
    "rq_commands_per_task",
    "rq_server_us_per_task",
    "rq_latency_p50_ms",
    "rq_latency_p99_ms",
    "worker1_default_rate",
    "worker1_default_cpu_us",
    "worker1_again_rate",
    "worker1_default_again_rate",
    "default_flags_share",
    "huey_rate",
    "huey_cpu_us",
    "dramatiq_rate",
    "dramatiq_cpu_us",
    "best_peer_rate",
    "worker_peak_rss_mb",
    "huey_latency_p50_ms",
    "huey_latency_p99_ms",
    "idle_worker_cpu_pct",
    "idle_worker_calls_per_s",
}
# Drains and probes: how many tasks each was given in --quick.
SENT = {
    "raw_consume_rate": 500,
    "worker1_rate": 500,
    "worker1_cpu_us": 500,
    "worker2_rate": 500,
    "worker2_cpu_us": 500,
    "worker1_default_rate": 500,
    "worker1_again_rate": 500,
    "worker1_default_again_rate": 500,
    "huey_rate": 500,
    "dramatiq_rate": 500,
    "rq_simple_rate": 500,
    "rq_simple_cpu_us": 500,
    "rq_fork_rate": 100,
    "rq_fork_cpu_us": 100,
    "latency_p50_ms": 50,
    "latency_p99_ms": 50,
    "raw_latency_p50_ms": 50,
    "raw_latency_p99_ms": 50,
    "rq_latency_p50_ms": 50,
    "rq_latency_p99_ms": 50,
    "worker_peak_rss_mb": 2000,
    "huey_latency_p50_ms": 50,
    "huey_latency_p99_ms": 50,
}


@pytest.fixture(scope="module")
def quick() -> dict[str, Any]:
    """One `redismq bench --quick --json` run, as a real command."""
    env = {k: v for k, v in os.environ.items() if k not in ("REDISMQ_URL", "REDISMQ_NAMESPACE")}
    proc = subprocess.run(
        [sys.executable, "-m", "redismq.cli.main", "bench", "--quick", "--json"],
        cwd=ROOT,
        env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def test_every_figure_is_positive_and_finite(quick: dict[str, Any]) -> None:
    figures = quick["figures"]
    assert set(figures) == FIGURES
    for name, fig in figures.items():
        assert isinstance(fig["value"], float | int), name
        assert math.isfinite(fig["value"]) and fig["value"] > 0, (name, fig["value"])
        assert fig["unit"] and fig["label"], name
    assert quick["jobs"] == 500 and quick["quick"] is True
    assert quick["rq_fork_jobs"] == 100 and quick["latency_sends"] == 50
    assert quick["one_at_a_time_jobs"] == 500
    assert quick["queues"] == 4


def test_ratios_are_value_over_baseline(quick: dict[str, Any]) -> None:
    figures = quick["figures"]
    seen = 0
    for name, fig in figures.items():
        for r in fig["ratios"]:
            base = figures[r["baseline"]]["value"]
            assert math.isclose(r["ratio"], fig["value"] / base, rel_tol=1e-9), (name, r)
            assert (r["met"] is None) == (r["target"] is None)
            if r["target"] is not None:  # e.g. "≥ 2": met is whether the ratio meets it
                sign, bound = r["target"].split()
                expected = {"≥": operator.ge, "≤": operator.le, "<": operator.lt}[sign]
                assert r["met"] is expected(r["ratio"], float(bound)), (name, r)
            seen += 1
    assert seen >= 15
    # the targets of the issue are printed next to their figures
    targets = {
        (name, r["baseline"]): r["target"] for name, f in figures.items() for r in f["ratios"]
    }
    assert targets[("send_rate", "send_raw_xadd_rate")] == "≥ 0.9"  # measured in turns
    assert targets[("send_many_rate", "raw_xadd_pipelined_rate")] == "≥ 0.8"
    assert targets[("worker1_rate", "raw_consume_rate")] == "≥ 0.5"
    assert targets[("worker1_rate", "rq_simple_rate")] == "≥ 100"
    assert targets[("worker1_rate", "best_peer_rate")] == "≥ 15"
    # default flags against WARNING: the four drains' rates, summed by kind
    share = figures["default_flags_share"]
    assert share["target"] == "≥ 0.9" and share["met"] is (share["value"] >= 0.9)
    rates = {k: figures[k]["value"] for k in ("worker1_rate", "worker1_again_rate")}
    defaults = {
        k: figures[k]["value"] for k in ("worker1_default_rate", "worker1_default_again_rate")
    }
    assert math.isclose(share["value"], sum(defaults.values()) / sum(rates.values()))
    assert targets[("worker2_rate", "worker1_rate")] == "≥ 1.7"
    assert figures["commands_per_task"]["target"] == "≤ 3"
    assert figures["server_us_per_task"]["target"] == "≤ 15"
    # the drain's share of the server's CPU is a part of the whole (the send is the rest)
    drain, whole = figures["server_drain_us_per_task"], figures["server_us_per_task"]
    assert 0 < drain["value"] < whole["value"]
    assert figures["latency_p50_ms"]["target"] == "< 0.7"
    assert figures["latency_p99_ms"]["target"] == "< 1.5"
    assert figures["worker_peak_rss_mb"]["target"] == "< 100"
    assert targets[("latency_p50_ms", "huey_latency_p50_ms")] == "≤ 0.6"
    assert targets[("latency_p99_ms", "huey_latency_p99_ms")] == "≤ 1"


def test_every_task_completed(quick: dict[str, Any]) -> None:
    figures = quick["figures"]
    for name, sent in SENT.items():
        assert figures[name]["sent"] == sent, name
        assert figures[name]["completed"] == sent, name
    runs = quick["runs"]
    assert set(runs) == {
        *("redismq_worker1", "redismq_worker2", "redismq_worker1_again"),
        *("redismq_worker1_default", "redismq_worker1_default_again"),
        *("rq_simple", "rq_fork", "huey", "dramatiq"),
    }
    for name, run in runs.items():
        assert run["exit_code"] == 0, name
        assert run["completed"] == run["sent"], name
        assert 0 < run["tasks_in_window"] <= run["completed"], name
        assert run["cpu_total_s"] > 0, name  # the peers' too: their workers are still running


def test_commands_per_task(quick: dict[str, Any]) -> None:
    figures = quick["figures"]
    assert figures["commands_per_task"]["value"] > 0
    assert figures["rq_commands_per_task"]["value"] > 0
    # every redismq task is sent with one XADD; done records are written with one ZADD per
    # settled batch (and the running marks with one per read)
    redismq = quick["commands"]["redismq"]
    assert redismq["xadd"] >= 1 and redismq["zadd"] > 0
    assert sum(redismq.values()) == pytest.approx(figures["commands_per_task"]["value"], 0.01)
    assert sum(quick["commands"]["rq"].values()) == pytest.approx(
        figures["rq_commands_per_task"]["value"], 0.01
    )
    assert quick["commands"]["raw"]["xadd"] == 1


def test_the_table_shows_every_figure(quick: dict[str, Any]) -> None:
    buf = io.StringIO()
    print_report(quick, Console(file=buf, width=200, color_system=None))
    text = buf.getvalue()
    for fig in quick["figures"].values():
        assert fig["label"] in text
    assert "500/500" in text and "100/100" in text
    assert "forking Worker drains 100 jobs" in text
    # a ratio's target is printed on the ratio's own line
    shorts = {s.name: s.short or s.label for s in SPECS}
    lines = text.splitlines()
    for name, fig in quick["figures"].items():
        for r in fig["ratios"]:
            if r["target"] is not None:
                shown = f"{_times(r['ratio'])} {shorts[r['baseline']]}"
                assert any(shown in line and r["target"] in line for line in lines), (name, r)


def test_bad_options_are_one_line_errors() -> None:
    result = CliRunner().invoke(main, ["bench", "--jobs", "0"])
    assert result.exit_code == 2
    assert "--jobs" in result.output and "Traceback" not in result.output


def test_helpers() -> None:
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([float(i) for i in range(1, 101)], 99) == 99.0
    assert percentile([5.0], 99) == 5.0
    assert Target(">=", 0.85).met(0.85) and not Target(">=", 0.85).met(0.84)
    assert Target("<", 0.7).met(0.69) and not Target("<", 0.7).met(0.7)
    assert str(Target("<=", 3)) == "≤ 3"


def test_what_bounds_two_processes() -> None:
    def results(server_us: float) -> Results:
        res = Results(1000, False, 100, 10, 1000)
        for name, value in (
            ("worker1_rate", 40_000.0),
            ("worker1_cpu_us", 15.0),
            ("server_drain_us_per_task", server_us),
        ):
            res.put(name, value)
        return res

    two = results(25.0)
    bound_of_processes(two, 2)
    [note] = two.notes  # 2 cores / 40 µs per task; Redis's thread / 25 µs
    assert "2 cores drain at most 50,000 tasks/s (1.25× one process)" in note, note
    assert "Redis, on one thread, at most 40,000 (1.00×)" in note, note
    assert "Redis under 14.7 µs per task" in note, note
    cores = results(25.0)
    bound_of_processes(cores, 64)  # cores enough; Redis's thread is not
    assert len(cores.notes) == 1
    room = results(8.0)
    bound_of_processes(room, 8)  # 8 cores / 23 µs and 125,000 for Redis: 1.7× fits
    assert room.notes == []


def test_what_bounds_the_send() -> None:
    def results(send_rate: float) -> Results:
        res = Results(1000, False, 100, 10, 1000)
        for name, value in (
            ("send_rate", send_rate),
            ("send_raw_xadd_rate", 8_000.0),  # 125 µs a raw XADD in turns
            ("send_server_us", 24.0),
            ("raw_xadd_server_us", 4.0),
        ):
            res.put(name, value)
        return res

    slow = results(5_000.0)  # 200 µs a send
    bound_of_send(slow)
    [note] = slow.notes
    assert "a raw XADD takes 125.0 µs and a send 200.0 µs" in note, note
    assert "24.0 µs of Redis time against an XADD's 4.0" in note, note
    assert "at most 0.86× the raw XADD" in note, note  # 125 / (125 + 20)
    assert "The other 55.0 µs are the client's and the wire's" in note, note
    assert "0.9× needs a send under 138.9 µs" in note, note
    fast = results(7_500.0)  # 0.94×: nothing to explain
    bound_of_send(fast)
    assert fast.notes == []


def test_what_bounds_idle_latency() -> None:
    def results(ours: float, huey: float, floor: float) -> Results:
        res = Results(1000, False, 100, 10, 1000)
        for name, value in (
            ("latency_p50_ms", ours),
            ("huey_latency_p50_ms", huey),
            ("raw_latency_p50_ms", floor),
        ):
            res.put(name, value)
        return res

    below = results(0.40, 0.50, 0.33)
    bound_of_latency(below)
    [note] = below.notes
    assert "starts a probe 0.33 ms after its XADD (p50); redismq takes 0.40 ms" in note, note
    assert "0.6× huey's 0.50 ms is 0.30 ms, below that floor by 0.03 ms" in note, note
    above = results(0.80, 1.00, 0.50)
    bound_of_latency(above)
    [note] = above.notes
    assert "0.6× huey's 1.00 ms is 0.60 ms, 0.10 ms above that floor" in note, note
    met = results(0.30, 0.60, 0.25)
    bound_of_latency(met)
    assert met.notes == []
