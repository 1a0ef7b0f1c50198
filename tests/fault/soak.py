"""The fault soak: a bounded, self-stopping run of the whole system on loopback, with faults.

    python -m tests.fault.soak --tasks 100000        # make soak
    python -m tests.fault.soak --tasks 5000 --seed 7 --keep /tmp/soak --json /tmp/soak.json

What runs (every server a real one, from the same binary as the tests):

- a meta Redis, and 2 brokers `b0`, `b1`, each a master + a replica watched by 3 Sentinels,
  registered as `sentinel://` URLs;
- the NameServer (`redismq nameserver --interval 0.5`);
- 3 workers (`redismq worker tests.apps.soak_app:app --processes 2 --concurrency 4
  --visibility-timeout 2`): each a supervisor with 2 worker processes;
- producer threads sending task i = 0..N-1 with `durability="replicated"` and
  `dedup_key=f"task-{i}"`. A send that raises (NotReplicated, QueueUnavailable,
  BrokerUnavailable during a failover, a killed connection) is sent again with the same dedup
  key until it returns; only a send that returned is *acknowledged*.

The task writes one row per run in `runs` and, inside an effect-once step, one row in
`effects` with the step's `step.key` (tests/apps/soak_app.py). `effects` stands for the
external system: it would drop a repeat of a key it has, as a mail or payment API does with
an idempotency key; the soak counts such repeats as *fenced*.

Faults, bounded in number and time. Periodic (the fault thread): SIGKILL a random worker
process every few seconds (its supervisor restarts it); SIGSTOP a random worker process for
3 s, longer than the visibility timeout, every few seconds (`--pause-every`; its leases
lapse and other workers take its messages over while it still holds them); CLIENT KILL
of every normal client of a master (or the meta Redis) but the Sentinels' links, every
few seconds. One-shot (a
helper thread, at fixed fractions of the acknowledged sends): SIGTERM a whole worker
(supervisor) and start a new one; restart the replica of one broker; SIGKILL the master of
the other broker once (Sentinel fails over; the old master comes back as the new master's
replica; the NameServer must report the new master). Periodic faults stop once most of the
work is finished, so the end settles.

At the end (every acknowledged task done or dead, or the time limit) it prints a table and
returns it as a dict (`run_soak`); every process and server it started is stopped, also on
failure.

Known limits, measured and explained rather than hidden:

- An effect-once step cannot be atomic with an effect outside Redis: a worker process
  SIGKILLed after the effect and before the step's done mark reached Redis repeats the
  effect when the task is redelivered (README, Guarantees). On a loaded 2-core machine that
  window is milliseconds to tens of milliseconds wide (the thread waits for the GIL between
  the two), and a few per cent of the worker SIGKILLs land in it.
- A worker process stopped longer than the visibility timeout renews nothing: its leases
  and step claims lapse, another worker takes its messages over and claims the steps, and
  a run stopped between its claim and its effect does the effect when it resumes (its next
  claim or done mark learns it lost the message, too late for this one).
- Replication is asynchronous. `durability="replicated"` (WAIT 1) makes an acknowledged
  send exist on the replica that Sentinel promotes (each broker has one replica), so no
  acknowledged send is lost; but the step's claim and done mark, the acknowledgement and
  the done record are plain writes. A master SIGKILLed while a task is between its step
  claim and its done mark (the mark then fails with the broker), or just after a done mark
  it had not yet replicated, leaves a new master without the mark: the task runs again and
  repeats its effect. A send the replica did not confirm (`NotReplicated`: sent again) can
  run before the failover loses it with its dedup record; the resend stores it again under
  a new id and it runs again, its step.key made of the dedup key as the first's was.

Every repeated effect is attributed to one of these windows from what the thread that wrote
the first effect did next and what was killed or stopped around then (`_cause` in
tests/fault/soak_report.py), or reported as unexplained. Each repeat carries the same
step.key as the first, so the external side drops it: the *double effects* (what reached
it twice) must be 0. The short version (tests/fault/test_soak.py) asserts that no repeat is
unexplained, that nothing reached the external side twice, and that the faults which crash
nothing repeat no effect at all.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run from elsewhere than the project's root
    sys.path.insert(0, str(ROOT))

from redismq import Client  # noqa: E402
from redismq.brokers import list_brokers  # noqa: E402
from redismq.status import live_workers, topic_status  # noqa: E402
from tests.apps import soak_app  # noqa: E402
from tests.fault.soak_cluster import BROKERS, Cluster  # noqa: E402
from tests.fault.soak_faults import Faults  # noqa: E402
from tests.fault.soak_report import build_report, format_report  # noqa: E402


@dataclass
class Config:
    """The shape of one soak run (the defaults are the full soak)."""

    tasks: int = 100_000
    producers: int = 4
    queues: int = 8
    workers: int = 3
    processes: int = 2
    concurrency: int = 4
    visibility_timeout: float = 2.0
    grace: float = 5.0
    child_kill_every: float = 3.0
    max_child_kills: int = 200
    client_kill_every: float = 5.0
    max_client_kills: int = 200
    # SIGSTOP a worker process for `pause_for` seconds this often (a process pause longer
    # than the visibility timeout: its leases expire while it still runs its jobs)
    pause_every: float = 5.0
    pause_for: float = 3.0
    max_pauses: int = 50
    # one-shot faults, at these fractions of the sends acknowledged (None: not done)
    worker_restart_at: float | None = 0.25
    replica_restart_at: float | None = 0.40
    master_kill_at: float | None = 0.55
    # periodic faults stop once this fraction of the tasks is finished (the end settles)
    faults_until: float = 0.95
    time_limit: float = 1800.0  # the whole run; sends stop at 70 % of it
    send_give_up: float = 120.0  # one task's resends stop after this long
    rate: float | None = None  # sends per second over all producers (None: as fast as it goes)
    seed: int = field(default_factory=lambda: random.randrange(1 << 31))
    workdir: str | None = None  # kept when given; else a temporary directory, removed

    @property
    def crash_faults(self) -> bool:
        """Whether a worker process or a master is SIGKILLed, or a worker paused (which can
        repeat an effect)."""
        return (
            (self.max_child_kills > 0 and self.child_kill_every > 0)
            or (self.max_pauses > 0 and self.pause_every > 0)
            or self.master_kill_at is not None
        )

    @property
    def master_broker(self) -> str:
        return BROKERS[0]

    @property
    def replica_broker(self) -> str:
        return BROKERS[1]


# -- producers -------------------------------------------------------------------------
class Producer(threading.Thread):
    """Sends its share of the tasks, each until a send returns (same dedup key every time)."""

    def __init__(self, soak: Soak, ids: range) -> None:
        super().__init__(daemon=True, name=f"producer-{ids.start}")
        self.soak = soak
        self.ids = ids
        self.acked: dict[int, tuple[str, int, float]] = {}  # task -> (message id, queue, at)
        self.gave_up: list[int] = []
        self.errors: Counter[str] = Counter()
        self.resent = 0  # tasks that needed more than one send

    def run(self) -> None:
        client = Client(self.soak.meta_url, durability="replicated", replica_timeout=1.0)
        rate = self.soak.config.rate
        every = self.soak.config.producers / rate if rate else 0.0
        due = time.monotonic()
        try:
            for i in self.ids:
                if self.soak.stop_sending.is_set():
                    self.gave_up.append(i)
                    continue
                if every:
                    due += every
                    time.sleep(max(0.0, due - time.monotonic()))
                self.send(client, i)
        finally:
            client.close()

    def send(self, client: Client, i: int) -> None:
        body = {"task": soak_app.TASK, "args": [i], "kwargs": {}}
        give_up = time.monotonic() + self.soak.config.send_give_up
        pause = 0.05
        tries = 0
        while True:
            tries += 1
            try:
                sent = client.send_message(soak_app.TOPIC, body, dedup_key=f"task-{i}")
            except Exception as exc:  # not acknowledged: send it again, same dedup key
                self.errors[type(exc).__name__] += 1
                if time.monotonic() > give_up or self.soak.stop_sending.is_set():
                    self.gave_up.append(i)
                    return
                time.sleep(pause * random.uniform(0.5, 1.0))
                pause = min(1.0, pause * 2)
                continue
            self.acked[i] = (sent.id, sent.queue, time.time())
            if tries > 1:
                self.resent += 1
            return


# -- the run ---------------------------------------------------------------------------
class Soak:
    def __init__(self, config: Config, out: Callable[[str], None] = print) -> None:
        self.config = config
        self.out = out
        self.started = time.monotonic()
        self.stop_sending = threading.Event()
        self.sigtermed: dict[int, float] = {}
        self.cluster: Cluster
        self.producers: list[Producer] = []
        self.client: Client

    @property
    def meta_url(self) -> str:
        return self.cluster.meta_url

    def say(self, text: str) -> None:
        self.out(f"[{time.monotonic() - self.started:7.1f}s] {text}")

    def acked(self) -> int:
        return sum(len(p.acked) for p in self.producers)

    def send_progress(self) -> float:
        if self.producers and not any(p.is_alive() for p in self.producers):
            return 1.0
        return self.acked() / max(1, self.config.tasks)

    def nameserver_address(self, broker: str, address: str, timeout: float) -> float | None:
        """When (monotonic) the NameServer recorded `address` as the broker's master."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                for b in list_brokers(self.client):
                    if (
                        b.name == broker
                        and b.health.get("up")
                        and b.health.get("address") == (address)
                    ):
                        return time.monotonic()
            time.sleep(0.1)
        return None

    def group_row(self) -> dict[str, Any]:
        status = topic_status(self.client, soak_app.TOPIC)
        row = next(g for g in status["groups"] if g["name"] == soak_app.GROUP)
        return {**row, "delayed": status["delayed"], "unreachable": status["unreachable_queues"]}

    def run(self) -> dict[str, Any]:
        c = self.config
        given = Path(c.workdir) if c.workdir else None
        workdir = given or Path(tempfile.mkdtemp(prefix="redismq-soak-"))
        workdir.mkdir(parents=True, exist_ok=True)
        db = workdir / "effects.db"
        with contextlib.suppress(FileNotFoundError):
            db.unlink()
        soak_app.create_db(db)
        self.cluster = Cluster(c, workdir, db)
        self.say(f"soak of {c.tasks} tasks, seed {c.seed}, files in {workdir}")
        faults: Faults | None = None
        try:
            self.cluster.start_servers()
            self.client = Client(self.meta_url)
            topic = self.client.create_topic(soak_app.TOPIC, queues=c.queues)
            placement = Counter(topic.placement)
            if set(placement) != set(BROKERS):
                raise RuntimeError(f"every broker should hold queues: {dict(placement)}")
            self.cluster.start_nameserver()
            for _ in range(c.workers):
                self.cluster.start_worker()
            self._wait_workers()
            self.say(f"queues per broker {dict(placement)}; workers up; sending")
            begun = time.monotonic()
            share = [range(k, c.tasks, c.producers) for k in range(c.producers)]
            self.producers = [Producer(self, ids) for ids in share]
            faults = Faults(self)
            for p in self.producers:
                p.start()
            faults.start()
            timed_out = self._drain(faults)
            finished = time.monotonic()
            faults.stop_all.set()
            faults.join(120)
            self.cluster.stop_workers()  # nothing writes effects any more
            report = build_report(self, faults, placement, begun, finished, timed_out)
        finally:
            self.stop_sending.set()
            if faults is not None:
                faults.stop_all.set()
            if hasattr(self, "client"):
                self.client.close()
            self.cluster.stop()
            if given is None:
                shutil.rmtree(workdir, ignore_errors=True)
        report["workdir"] = str(workdir) if given else None
        return report

    def _wait_workers(self) -> None:
        want = self.config.workers * self.config.processes
        deadline = time.monotonic() + 120
        while len(live_workers(self.client)) < want:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the workers did not start; logs in {self.cluster.workdir}")
            for p in self.cluster.supervisors:
                if p.poll() is not None:
                    raise RuntimeError(f"a worker exited with {p.returncode}; see its log")
            time.sleep(0.2)

    def _drain(self, faults: Faults) -> bool:
        """Wait until every acknowledged task is done or dead (True: the time limit came
        first). Sends stop at 70 % of the time limit."""
        c = self.config
        send_until = self.started + 0.7 * c.time_limit
        until = self.started + c.time_limit - 30
        last_print = 0.0
        settled_since: float | None = None
        while True:
            now = time.monotonic()
            if now > send_until:
                self.stop_sending.set()
            sending = any(p.is_alive() for p in self.producers)
            row = self.group_row()
            acked = self.acked()
            finished = row["done"] + row["dead"]
            backlog = row["pending"] + row["lag"] + row["retrying"] + row["delayed"]
            if finished >= c.faults_until * c.tasks or self.stop_sending.is_set():
                faults.stop_periodic.set()
            if now - last_print >= 5:
                last_print = now
                self.say(
                    f"acked {acked}/{c.tasks}, done {row['done']}, dead {row['dead']}, "
                    f"pending {row['pending']}, lag {row['lag']}, retrying {row['retrying']}, "
                    f"faults {dict(faults.counts)}"
                )
            quiet = (
                not sending
                and faults.oneshots_done.is_set()
                and backlog == 0
                and not row["unreachable"]
            )
            settled_since = (settled_since or now) if quiet else None
            if quiet and finished >= acked:
                return False
            # nothing moves any more although tasks are missing: they are lost, not late
            if settled_since is not None and now - settled_since > 5 * c.visibility_timeout + 10:
                return False
            if now > until:
                self.stop_sending.set()
                return True
            time.sleep(1.0)


def run_soak(config: Config | None = None, out: Callable[[str], None] = print) -> dict[str, Any]:
    """Run one soak; returns its report (see `format_report`)."""
    return Soak(config or Config(), out).run()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.fault.soak", description=__doc__.split("\n\n")[0]
    )
    defaults = Config()
    parser.add_argument("--tasks", type=int, default=defaults.tasks)
    parser.add_argument("--producers", type=int, default=defaults.producers)
    parser.add_argument("--workers", type=int, default=defaults.workers)
    parser.add_argument("--time-limit", type=float, default=defaults.time_limit)
    parser.add_argument("--rate", type=float, default=None, help="sends/s (default: no limit)")
    parser.add_argument("--child-kill-every", type=float, default=defaults.child_kill_every)
    parser.add_argument("--client-kill-every", type=float, default=defaults.client_kill_every)
    parser.add_argument(
        "--pause-every",
        type=float,
        default=defaults.pause_every,
        help=f"SIGSTOP a worker process for 3 s this often (default {defaults.pause_every}; "
        "0: never)",
    )
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--no-master-kill", action="store_true", help="skip the failover")
    parser.add_argument("--keep", metavar="DIR", help="keep logs and the SQLite file in DIR")
    parser.add_argument("--json", metavar="FILE", help="also write the report as JSON")
    args = parser.parse_args(argv)
    config = Config(
        tasks=args.tasks,
        producers=args.producers,
        workers=args.workers,
        time_limit=args.time_limit,
        rate=args.rate,
        child_kill_every=args.child_kill_every,
        client_kill_every=args.client_kill_every,
        pause_every=args.pause_every,
        workdir=args.keep,
    )
    if args.seed is not None:
        config.seed = args.seed
    if args.no_master_kill:
        config.master_kill_at = None
    report = run_soak(config, out=lambda line: print(line, flush=True))
    print(format_report(report), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
