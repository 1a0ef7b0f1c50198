"""The soak's report: what was acknowledged, completed, lost and repeated, each repeated
effect attributed to its cause (the windows README "Guarantees" names, or unexplained), the
checks, and `format_report`, the table as text."""

from __future__ import annotations

import textwrap
from collections import Counter, defaultdict
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from redismq.keys import QueueKeys
from tests.apps import soak_app

if TYPE_CHECKING:
    from redismq import Client
    from tests.fault.soak import Soak
    from tests.fault.soak_faults import Faults

# A master SIGKILL can lose what was written in about the last replication round trip; the
# attribution of a repeated effect to the failover allows this much before the kill (on a
# loaded machine replication can lag).
FAILOVER_WINDOW = 5.0
# A claim's reply may arrive this long after the master executed it (and then died).
CLAIM_SLACK = 0.5
# A worker process SIGKILLed this soon after it wrote an effect, having done nothing since
# (no later row from its thread), died before the step's done mark was written.
KILL_WINDOW = 10.0
# Why an effect happened twice (see `_cause`).
WORKER_KILL = "worker SIGKILL between the effect and the step's done mark"
FAILOVER_UNWRITTEN = "master SIGKILL between the step's claim and its done mark"
FAILOVER_UNREPLICATED = "master SIGKILL: the step's done mark was not replicated"
LATE_MARK = "the step's claim expired before its done mark (a run slower than the timeout)"
PAUSED = "worker SIGSTOP past its lease inside the step (between its claim and its done mark)"
CONCURRENT = "two runs at once: the first run outlived its lease and its step claim"
RESENT = "a copy stored again under a new id (the failover lost the first with its dedup record)"
UNEXPLAINED = "unexplained"
# The windows README "Guarantees" names: each repeat there reaches the external side with the
# same step.key, which drops it (the soak's `effects` table checks the key like an API).
DOCUMENTED = (WORKER_KILL, FAILOVER_UNWRITTEN, FAILOVER_UNREPLICATED, PAUSED, CONCURRENT, RESENT)
EXPLANATIONS = {
    RESENT: (
        "the task's first copy ran on the failed-over broker, whose failover then lost it "
        "with its dedup record (its send had raised NotReplicated, or the replica had not "
        "synced); the producer sent it again with the same dedup key and the new copy, "
        "stored under a new message id, ran too. Its step.key is made of the dedup key, so "
        "the external side drops the repeat (README, Guarantees: production)."
    ),
    WORKER_KILL: (
        "the worker process died after the effect was written and before the step's done "
        "mark reached Redis; the redelivered task found the step unclaimed and did the "
        "effect again. Inherent to an effect outside Redis (README, Guarantees: effect-once "
        "steps); a few per cent of the worker SIGKILLs land there."
    ),
    FAILOVER_UNWRITTEN: (
        "the broker's master died after the step was claimed and before its done mark was "
        "written (the mark failed with the broker); after the failover the task ran again. "
        "Narrowable in the library: retry the done mark on the new master."
    ),
    PAUSED: (
        "the worker process was stopped (SIGSTOP; in production a GC pause, a VM steal, a swap "
        "storm) after its step's claim, longer than the visibility timeout: a stopped process "
        "renews nothing, so its lease and claim lapsed, another worker took the message over "
        "and claimed the step, and the first run did its effect when it resumed. No lock can "
        "close this; the repeat carries the same step.key and the external side drops it."
    ),
    CONCURRENT: (
        "the first run was still going (stalled longer than the visibility timeout: a starved "
        "process renews nothing) when its lease and step claim lapsed and another worker took "
        "the message over; both runs did the effect. The same window as a pause: the repeat "
        "carries the same step.key and the external side drops it."
    ),
    LATE_MARK: (
        "the step was claimed, the effect written, and the done mark came more than the "
        "visibility timeout after the claim, and the task ran again as if the step were new, "
        "although no other run overlapped it. Claims are renewed with the lease and a done "
        "mark is always written: a library bug (redismq/steps.py, redismq/scripts/step.lua)."
    ),
    FAILOVER_UNREPLICATED: (
        "the done mark was written on the old master but not replicated when it was killed "
        "(replication is asynchronous); the promoted replica had no mark. Narrowable in the "
        "library: WAIT for a replica after the done mark."
    ),
}


def _ids(client: Client, placement: Counter[str]) -> tuple[set[str], set[str], dict[str, int]]:
    """Every message id in the done records and the dead-letter streams, and the
    queue counters summed (deduplicated sends)."""
    topic = client.topic(soak_app.TOPIC, create=False)
    done: set[str] = set()
    dead: set[str] = set()
    counters: Counter[str] = Counter()
    for q in range(topic.queues):
        k = QueueKeys(client.namespace, soak_app.TOPIC, q)
        r = client.router.queue_broker(topic, q).redis
        done.update(m.decode() for m in r.zrange(k.done(soak_app.GROUP), 0, -1))
        for _, f in r.xrange(k.dead(soak_app.GROUP)):
            dead.add(f[b"id"].decode())
        counters.update({k.decode(): int(v) for k, v in r.hgetall(k.counters).items()})
    return done, dead, dict(counters)


def build_report(
    soak: Soak,
    faults: Faults,
    placement: Counter[str],
    begun: float,
    finished: float,
    timed_out: bool,
) -> dict[str, Any]:
    """The run's report: a dict (see `format_report`)."""
    c = soak.config
    acked: dict[int, tuple[str, int, float]] = {}
    for p in soak.producers:
        acked.update(p.acked)
    errors: Counter[str] = Counter()
    for p in soak.producers:
        errors.update(p.errors)
    row = soak.group_row()
    done_ids, dead_ids, counters = _ids(soak.client, placement)
    finished_ids = done_ids | dead_ids
    lost_ids = sorted(i for i, (mid, _, _) in acked.items() if mid not in finished_ids)

    conn = soak_app.connect(soak.cluster.db)
    try:
        runs, distinct_runs = conn.execute(
            "SELECT COUNT(*), COUNT(DISTINCT task_id) FROM runs"
        ).fetchone()
        effect_rows, distinct_effects = conn.execute(
            "SELECT COUNT(*), COUNT(DISTINCT task_id) FROM effects"
        ).fetchone()
        # what the external side kept (it drops an effect whose step.key it has)
        (kept_rows,) = conn.execute("SELECT COUNT(DISTINCT key) FROM effects").fetchone()
        skips = conn.execute("SELECT COUNT(*) FROM skips").fetchone()[0]
        late = {
            (task_id, pid, thread): seconds
            for task_id, pid, thread, seconds in conn.execute(
                "SELECT task_id, pid, thread, seconds FROM late_marks"
            )
        }
        with_effect = {i for (i,) in conn.execute("SELECT DISTINCT task_id FROM effects")}
        repeated = defaultdict(list)
        for task_id, pid, thread, mid, queue, claimed_at, fenced, at in conn.execute(
            "SELECT task_id, pid, thread, message_id, queue, claimed_at, "
            "EXISTS (SELECT 1 FROM effects AS e WHERE e.key = effects.key "
            "AND e.rowid < effects.rowid), at FROM effects "
            "WHERE task_id "
            "IN (SELECT task_id FROM effects GROUP BY task_id HAVING COUNT(*) > 1) "
            "ORDER BY task_id, at"
        ):
            later = " UNION ALL ".join(
                f"SELECT at FROM {t} WHERE pid = ? AND thread = ? AND at > ?"
                for t in ("runs", "effects", "skips")
            )
            (next_at,) = conn.execute(
                f"SELECT MIN(at) FROM ({later})", (pid, thread, at) * 3
            ).fetchone()
            (started,) = conn.execute(
                "SELECT MAX(at) FROM runs WHERE task_id = ? AND pid = ? AND thread = ? AND at <= ?",
                (task_id, pid, thread, at),
            ).fetchone()
            repeated[task_id].append(
                {
                    "pid": pid,
                    "thread": thread,
                    "message": mid,
                    "queue": queue,
                    "run_started": started,
                    "claimed_at": claimed_at,
                    "at": at,
                    "fenced": bool(fenced),
                    "next_at": next_at,
                    "late_mark": late.get((task_id, pid, thread)),
                }
            )
        runs_of = {
            task_id: [
                {"pid": pid, "thread": thread, "attempt": attempt, "at": at}
                for pid, thread, attempt, at in conn.execute(
                    "SELECT pid, thread, attempt, at FROM runs WHERE task_id = ? ORDER BY at",
                    (task_id,),
                )
            ]
            for task_id in repeated
        }
    finally:
        conn.close()

    topic = soak.client.topic(soak_app.TOPIC, create=False)
    causes = Counter()
    doubles = []
    for task_id, rows in sorted(repeated.items()):
        cause = _cause(rows, topic.placement, faults, soak.sigtermed)
        causes[cause] += len(rows) - 1
        doubles.append({"task": task_id, "cause": cause, "effects": rows, "runs": runs_of[task_id]})
    lost = [
        {
            "task": i,
            "message": acked[i][0],
            "queue": acked[i][1],
            "broker": topic.placement[acked[i][1]],
            "acked_at": acked[i][2],
            "cause": _lost_cause(acked[i], topic.placement, faults),
        }
        for i in lost_ids
    ]
    missing_effects = len(set(acked) - with_effect)
    elapsed = finished - begun
    completed = row["done"]
    report: dict[str, Any] = {
        "tasks": c.tasks,
        "acknowledged": len(acked),
        "unacknowledged": c.tasks - len(acked),
        "sends_raised": dict(errors),
        "sends_retried_tasks": sum(p.resent for p in soak.producers),
        "completed": completed,
        "dead_letters": row["dead"],
        "effect_rows": effect_rows,
        "distinct_effects": distinct_effects,
        "missing_effects": missing_effects,
        "runs": runs,
        "redeliveries": runs - distinct_runs,
        "late_step_marks": len(late),
        "slowest_late_step_mark": round(max(late.values()), 2) if late else None,
        "duplicates_suppressed": {
            "sends_deduplicated": counters.get("deduplicated", 0),
            "redeliveries_of_done_messages": row["duplicates"],
            "effects_skipped_by_step": skips,
        },
        "lost": len(acked) - (completed + row["dead"]),
        "lost_tasks": lost,
        # a run repeated the effect (the step's windows), whether or not the external
        # side dropped it by its step.key
        "repeated_effects": effect_rows - distinct_effects,
        "fenced_by_step_key": effect_rows - kept_rows,
        # what reached the external side twice although it checks step.key
        "double_effects": kept_rows - distinct_effects,
        "double_effect_causes": dict(causes),
        "unexplained_double_effects": sum(
            n for cause, n in causes.items() if cause not in DOCUMENTED
        ),
        "double_effect_tasks": doubles[:50],
        "faults": {
            k: faults.counts.get(k, 0)
            for k in (
                "child_sigkill",
                "worker_sigterm",
                "replica_restart",
                "master_sigkill",
                "client_kill",
                "connections_killed",
                "pause",
            )
        },
        "fault_errors": faults.errors,
        "events": [asdict(e) for e in faults.events],
        "failover": faults.failover,
        "queues_per_broker": dict(placement),
        "timed_out": timed_out,
        "duration": round(elapsed, 1),
        "tasks_per_second": round(completed / elapsed, 1) if elapsed > 0 else 0.0,
        "seed": c.seed,
        "config": asdict(c),
    }
    report["checks"] = {
        "every send acknowledged": report["unacknowledged"] == 0,
        "lost == 0": report["lost"] == 0 and not lost,
        "every acknowledged task completed": not lost and completed >= len(acked),
        "every acknowledged task had its effect": missing_effects == 0,
        "no dead letters": report["dead_letters"] == 0,
        "finished in time": not timed_out,
        "faults injected without error": not faults.errors,
    }
    if c.crash_faults:
        # a SIGKILLed worker or master, or a paused worker, can repeat an effect (the
        # documented windows): each repeat must be one of those, printed with its cause
        report["checks"]["no repeated effect outside the documented windows"] = (
            report["unexplained_double_effects"] == 0
        )
    else:
        report["checks"]["no effect repeated by a run"] = report["repeated_effects"] == 0
    # every repeat carried the first one's step.key, so the external side dropped it
    report["checks"]["double effects (after step.key) == 0"] = report["double_effects"] == 0
    report["ok"] = all(report["checks"].values())
    return report


def _cause(
    rows: list[dict[str, Any]], placement: list[str], faults: Faults, sigtermed: dict[int, float]
) -> str:
    """Which window made a task's effect happen twice: what the thread that wrote the
    first effect did next, and what was killed around then."""
    first = rows[0]
    failover = faults.failover
    if (
        failover
        and placement[first["queue"]] == failover["broker"]
        and any(row["message"] != first["message"] for row in rows)
    ):
        return RESENT
    next_at = first["next_at"]  # the thread's next row after the effect (None: none)
    killed = faults.killed_pids.get(first["pid"])
    if killed is not None and next_at is None and 0 <= killed - first["at"] <= KILL_WINDOW:
        return WORKER_KILL
    if failover and placement[first["queue"]] == failover["broker"]:
        # the step was claimed on the old master (before it was killed; the reply may
        # come a moment later) and the effect written around the kill
        killed_at = failover["killed_at"]
        if (
            first["claimed_at"] <= killed_at + CLAIM_SLACK
            and first["at"] >= killed_at - FAILOVER_WINDOW
        ):
            if next_at is not None and next_at < killed_at:
                return FAILOVER_UNREPLICATED
            return FAILOVER_UNWRITTEN
    for row in rows:  # a run stopped (SIGSTOP) while it was inside the step
        end = row["next_at"] or row["at"] + KILL_WINDOW
        started = row["run_started"] if row["run_started"] is not None else row["claimed_at"]
        if any(started - CLAIM_SLACK <= p <= end for p in faults.paused_pids.get(row["pid"], ())):
            return PAUSED
    if first["late_mark"] is not None and not _overlapped(rows, faults):
        return LATE_MARK
    if _overlapped(rows, faults):
        return CONCURRENT
    if first["pid"] in sigtermed:
        return "graceful stop (SIGTERM) -- should not happen"
    return UNEXPLAINED


def _overlapped(rows: list[dict[str, Any]], faults: Faults) -> bool:
    """Whether the second run started while the first was still going (it had not moved
    on and was not killed): the first run's lease and step claim had lapsed meanwhile."""
    first, second = rows[0], rows[1]
    killed = faults.killed_pids.get(first["pid"])
    first_end = min(t for t in (first["next_at"], killed, float("inf")) if t is not None)
    return second["run_started"] is not None and second["run_started"] < first_end


def _lost_cause(acked: tuple[str, int, float], placement: list[str], faults: Faults) -> str:
    failover = faults.failover
    if failover and placement[acked[1]] == failover["broker"]:
        return "on the failed-over broker"
    return "unexplained"


def format_report(report: dict[str, Any]) -> str:
    """The soak's table, as text."""
    f = report["faults"]
    d = report["duplicates_suppressed"]
    failover = report["failover"]
    rows = [
        ("sends acknowledged", f"{report['acknowledged']} / {report['tasks']}"),
        (
            "sends that raised (resent)",
            f"{sum(report['sends_raised'].values())} "
            f"{dict(sorted(report['sends_raised'].items()))}",
        ),
        ("tasks completed (done records)", report["completed"]),
        ("side-effect rows", report["effect_rows"]),
        ("distinct tasks with an effect", report["distinct_effects"]),
        ("duplicates suppressed: resends deduplicated", d["sends_deduplicated"]),
        ("duplicates suppressed: redelivered done msgs", d["redeliveries_of_done_messages"]),
        ("duplicates suppressed: effects skipped by step", d["effects_skipped_by_step"]),
        ("dead letters", report["dead_letters"]),
        ("handler runs", report["runs"]),
        ("redeliveries (runs - distinct)", report["redeliveries"]),
        ("steps slower than the visibility timeout", report["late_step_marks"]),
        ("LOST = acked - (completed + dead)", report["lost"]),
        ("effects repeated by a run = rows - distinct", report["repeated_effects"]),
        ("  of which dropped by the receiver (step.key)", report["fenced_by_step_key"]),
        ("DOUBLE EFFECTS (reached the receiver twice)", report["double_effects"]),
        ("acknowledged tasks without an effect", report["missing_effects"]),
        ("faults: worker process SIGKILL", f["child_sigkill"]),
        ("faults: worker SIGTERM + new worker", f["worker_sigterm"]),
        ("faults: replica restart", f["replica_restart"]),
        ("faults: master SIGKILL (failover)", f["master_sigkill"]),
        ("faults: CLIENT KILL (connections)", f"{f['client_kill']} ({f['connections_killed']})"),
    ]
    rows.append(("faults: worker process SIGSTOP (3 s)", f["pause"]))
    if failover:
        rows.append(
            (
                "failover: promoted / NameServer showed it",
                f"{failover['promoted_after']} s / "
                f"{failover['nameserver_showed_new_master_after']} s",
            )
        )
    rows += [
        ("duration (first send to last task)", f"{report['duration']} s"),
        ("throughput", f"{report['tasks_per_second']} tasks/s"),
    ]
    width = max(len(k) for k, _ in rows)
    lines = [f"{'soak':<{width}}  seed {report['seed']}", "-" * (width + 30)]
    lines += [f"{k:<{width}}  {v}" for k, v in rows]
    if report["double_effect_causes"]:
        lines.append("effects repeated by a run, by cause:")
        for cause, n in report["double_effect_causes"].items():
            lines.append(f"  {n:>5}  {cause}")
            if cause in EXPLANATIONS:
                lines += [f"         {line}" for line in textwrap.wrap(EXPLANATIONS[cause], 80)]
    odd = [d for d in report["double_effect_tasks"] if d["cause"] not in DOCUMENTED]
    for d in odd[:5]:
        lines.append(f"  task {d['task']} ({d['cause']}):")
        lines += [f"    effect {e}" for e in d["effects"]]
        lines += [f"    run    {r}" for r in d["runs"]]
    if report["lost_tasks"]:
        lines.append(f"lost tasks (first 10): {report['lost_tasks'][:10]}")
    if report["fault_errors"]:
        lines.append(f"fault errors: {report['fault_errors']}")
    lines.append("checks:")
    lines += [f"  [{'ok' if ok else 'FAIL'}] {name}" for name, ok in report["checks"].items()]
    return "\n".join(lines)
