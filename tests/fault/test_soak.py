"""The short soak, run by `make test` (`make soak` runs the full one: tests/fault/soak.py).

Two runs of the whole system on loopback (2 brokers with a replica and 3 Sentinels each, the
NameServer, 3 workers of 2 processes, producers sending with durability="replicated" and
dedup keys):

- with every fault, crashes and pauses included (worker processes SIGKILLed every ~1 s and
  SIGSTOPped for 3 s, longer than the visibility timeout, every ~5 s, a worker SIGTERMed
  and replaced, a replica restarted, one master SIGKILLed and failed over, connections
  killed): no acknowledged send is lost, every one completes and has its effect. A crash
  or a pause can repeat an effect in the documented windows (a worker killed between the
  effect and the step's done mark; a worker stopped past its lease inside the step; a
  master killed before the mark was written or replicated): each repeat must be one of
  those, attributed by the soak, never another, and each carries the first one's step.key,
  so the external side drops it: nothing reaches it twice;
- with the faults that crash nothing (graceful worker restart, replica restart, killed
  connections): not one effect is repeated.
"""

from __future__ import annotations

import pytest

from .soak import Config, format_report, run_soak

pytestmark = [pytest.mark.fault, pytest.mark.slow, pytest.mark.timeout(240)]


def soak(config: Config) -> dict:
    report = run_soak(config, out=lambda line: print(line, flush=True))
    print(format_report(report))
    return report


def assert_nothing_lost(report: dict) -> None:
    tasks = report["tasks"]
    assert report["acknowledged"] == tasks, report["sends_raised"]
    assert not report["timed_out"]
    assert report["lost"] == 0 and report["lost_tasks"] == [], report["lost_tasks"]
    assert report["completed"] == tasks, "every acknowledged task completed (one done record)"
    assert report["missing_effects"] == 0, "every acknowledged task had its effect"
    assert report["dead_letters"] == 0
    assert report["fault_errors"] == []


def test_every_fault_loses_no_acknowledged_task_and_repeats_effects_only_where_documented():
    report = soak(
        Config(
            tasks=5_000,
            rate=400,  # about what the workers take: busy, so that kills land in jobs
            child_kill_every=1.0,
            client_kill_every=1.5,
            # jittered ×0.5–1.5: two pauses fit in the ~12.5 s of faults whatever the draw
            # (at 5 s, one run in eight or so drew two intervals longer than the run)
            pause_every=4.0,
            time_limit=180,
            send_give_up=60,
        )
    )
    faults = report["faults"]
    assert faults["child_sigkill"] >= 5, faults
    assert faults["worker_sigterm"] == faults["replica_restart"] == faults["master_sigkill"] == 1
    assert faults["client_kill"] >= 5, faults
    assert faults["pause"] >= 2, faults
    assert report["failover"]["nameserver_showed_new_master_after"] is not None
    assert_nothing_lost(report)
    assert report["unexplained_double_effects"] == 0, report["double_effect_tasks"]
    assert report["double_effects"] == 0, report["double_effect_tasks"]
    assert report["ok"], report["checks"]


def test_faults_that_crash_nothing_repeat_no_effect():
    report = soak(
        Config(
            tasks=3_000,
            rate=250,
            child_kill_every=0,
            pause_every=0,
            master_kill_at=None,
            client_kill_every=1.0,
            time_limit=120,
            send_give_up=60,
        )
    )
    faults = report["faults"]
    assert faults["worker_sigterm"] == faults["replica_restart"] == 1, faults
    assert faults["client_kill"] >= 5 and faults["child_sigkill"] == faults["master_sigkill"] == 0
    assert faults["pause"] == 0
    assert_nothing_lost(report)
    assert report["repeated_effects"] == 0, report["double_effect_tasks"]
    assert report["ok"], report["checks"]
