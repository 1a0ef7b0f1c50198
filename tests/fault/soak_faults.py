"""The soak's faults: the thread that SIGKILLs and SIGSTOPs worker processes and kills
connections (CLIENT KILL) every few seconds, and, once each, restarts a worker and a replica
and SIGKILLs a master (failover); it records what it did for the report."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import redis

from tests.fault.soak_cluster import BROKERS, spawn_children

if TYPE_CHECKING:
    from tests.fault.soak import Soak


@dataclass
class Event:
    at: float  # time.time()
    kind: str
    detail: dict[str, Any]


class Faults(threading.Thread):
    """Injects the faults: periodic ones every few seconds, one-shot ones at fractions of
    the acknowledged sends."""

    def __init__(self, soak: Soak) -> None:
        super().__init__(daemon=True, name="faults")
        self.soak = soak
        self.cluster = soak.cluster
        self.config = c = soak.config
        self.rng = random.Random(c.seed)
        self.counts: Counter[str] = Counter()
        self.events: list[Event] = []
        self.errors: list[str] = []
        self.stop_periodic = threading.Event()
        self.stop_all = threading.Event()
        self.oneshots_done = threading.Event()
        self.pending = sorted(
            (at, kind)
            for kind, at in (
                ("worker_restart", c.worker_restart_at),
                ("replica_restart", c.replica_restart_at),
                ("master_kill", c.master_kill_at),
            )
            if at is not None
        )
        self.failover: dict[str, Any] = {}
        self.killed_pids: dict[int, float] = {}
        self.paused_pids: dict[int, list[float]] = defaultdict(list)
        self.client_targets = [*BROKERS, "meta"]
        self.failing_over: str | None = None  # the broker whose master is down until promoted

    def event(self, kind: str, **detail: Any) -> None:
        self.events.append(Event(time.time(), kind, detail))
        self.soak.say(f"fault: {kind} {detail}")

    def _jitter(self, every: float) -> float:
        return time.monotonic() + every * self.rng.uniform(0.5, 1.5)

    def run(self) -> None:
        """Periodic faults here; one-shot faults in a thread of their own, so that a
        failover (seconds long) does not hold up the periodic ones."""
        oneshots = threading.Thread(target=self._oneshots, name="faults-oneshots", daemon=True)
        oneshots.start()
        c = self.config
        next_child = self._jitter(c.child_kill_every)
        next_client = self._jitter(c.client_kill_every)
        next_pause = self._jitter(c.pause_every)
        while not self.stop_all.is_set() and not self.stop_periodic.is_set():
            now = time.monotonic()
            if now >= next_pause and c.pause_every > 0:
                if self.counts["pause"] < c.max_pauses:
                    self._safely("pause", self.pause_child)
                next_pause = self._jitter(c.pause_every)
            if now >= next_child and c.child_kill_every > 0:
                if self.counts["child_sigkill"] < c.max_child_kills:
                    self._safely("child_sigkill", self.kill_child)
                next_child = self._jitter(c.child_kill_every)
            if now >= next_client and c.client_kill_every > 0:
                if self.counts["client_kill"] < c.max_client_kills:
                    self._safely("client_kill", self.kill_clients)
                next_client = self._jitter(c.client_kill_every)
            self.stop_all.wait(0.1)
        oneshots.join()

    def _oneshots(self) -> None:
        while self.pending and not self.stop_all.is_set():
            at, kind = self.pending[0]
            if at <= self.soak.send_progress():
                self.pending.pop(0)
                self._safely(kind, getattr(self, kind))
            else:
                self.stop_all.wait(0.1)
        self.oneshots_done.set()

    def _safely(self, kind: str, fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception as exc:
            self.errors.append(f"{kind}: {type(exc).__name__}: {exc}")
            self.soak.say(f"fault {kind} failed: {exc}")

    # the faults
    def kill_child(self) -> None:
        """SIGKILL one worker process of a random live worker; its supervisor restarts it."""
        candidates = [
            (sup.pid, pid)
            for sup in self.cluster.live_supervisors()
            for pid in spawn_children(sup.pid)
        ]
        if not candidates:
            return
        supervisor, pid = self.rng.choice(candidates)
        os.kill(pid, signal.SIGKILL)
        self.killed_pids[pid] = time.time()
        self.counts["child_sigkill"] += 1
        self.event("child SIGKILL", pid=pid, supervisor=supervisor)

    def pause_child(self) -> None:
        """SIGSTOP one worker process for `pause_for` seconds, then SIGCONT it."""
        candidates = [
            pid for sup in self.cluster.live_supervisors() for pid in spawn_children(sup.pid)
        ]
        if not candidates:
            return
        pid = self.rng.choice(candidates)
        os.kill(pid, signal.SIGSTOP)
        self.paused_pids[pid].append(time.time())
        self.counts["pause"] += 1
        self.event("worker SIGSTOP", pid=pid, seconds=self.config.pause_for)
        threading.Timer(self.config.pause_for, self._resume, (pid,)).start()

    @staticmethod
    def _resume(pid: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)

    def worker_restart(self) -> None:
        """SIGTERM a whole worker (its supervisor stops its processes gracefully) and start
        a new one."""
        live = self.cluster.live_supervisors()
        if not live:
            raise RuntimeError("no live worker to restart")
        old = self.rng.choice(live)
        children = spawn_children(old.pid)
        started = time.monotonic()
        new = self.cluster.start_worker()
        code = self.cluster.stop_supervisor(old, self.config.grace + 15)
        self.soak.sigtermed.update({old.pid: time.time(), **dict.fromkeys(children, time.time())})
        self.counts["worker_sigterm"] += 1
        self.event(
            "worker SIGTERM + new worker",
            old=old.pid,
            children=children,
            exit=code,
            new=new.pid,
            seconds=round(time.monotonic() - started, 1),
        )

    def replica_restart(self) -> None:
        """Restart the replica of one broker (it resyncs from its master)."""
        name = self.config.replica_broker
        replica = self.cluster.replica(name)
        started = time.monotonic()
        replica.restart()
        self.counts["replica_restart"] += 1
        self.event(
            "replica restart",
            broker=name,
            port=replica.port,
            seconds=round(time.monotonic() - started, 1),
        )

    def master_kill(self) -> None:
        """SIGKILL one broker's master; Sentinel promotes the replica; the old master comes
        back as the new master's replica; the NameServer must show the new master."""
        name = self.config.master_broker
        sentinels = self.cluster.sentinels[name]
        old, new = self.cluster.master(name), self.cluster.replica(name)
        killed_at = time.time()
        started = time.monotonic()
        self.failing_over = name
        old.kill()
        self.counts["master_sigkill"] += 1
        deadline = started + 60
        while sentinels.master_address() != (new.host, new.port):
            if time.monotonic() > deadline:
                raise RuntimeError(f"Sentinel did not fail {name} over within 60 s")
            time.sleep(0.05)
        promoted = time.monotonic() - started
        self.failing_over = None
        old.replica_of = new  # it comes back as the replica of the new master
        old.restart()
        rejoined = time.monotonic() - started
        seen = self.soak.nameserver_address(name, f"{new.host}:{new.port}", timeout=30)
        self.failover = {
            "broker": name,
            "killed_at": killed_at,
            "old": old.port,
            "new": new.port,
            "promoted_after": round(promoted, 2),
            "old_master_back_as_replica_after": round(rejoined, 2),
            "nameserver_showed_new_master_after": (
                round(seen - started, 2) if seen is not None else None
            ),
        }
        self.event("master SIGKILL", **self.failover)
        if seen is None:
            raise RuntimeError(f"the NameServer did not show the new master of {name}")

    def kill_clients(self) -> None:
        """Every normal client of a master (or of the meta Redis) loses its connection,
        except the Sentinels' own links (named `sentinel-…`): killing those right after a
        failover left the Sentinels without a reply from the new master for their 1 s
        down-after, and they failed it over again, back to the old master before it had
        synced, losing what the new one had stored (a second failover, not this fault)."""
        # (not the broker whose master is down: Sentinel has not named the new one yet)
        targets = [t for t in self.client_targets if t != self.failing_over]
        target = targets[self.counts["client_kill"] % len(targets)]
        server = self.cluster.meta if target == "meta" else self.cluster.master(target)
        assert server is not None
        conn = redis.Redis(host=server.host, port=server.port, socket_timeout=2.0)
        try:
            me = conn.client_id()
            ids = [
                c["id"]
                for c in conn.client_list(_type="normal")
                if int(c["id"]) != me and not c.get("name", "").startswith("sentinel-")
            ]
            pipe = conn.pipeline(transaction=False)
            for client_id in ids:
                pipe.execute_command("CLIENT", "KILL", "ID", client_id)
            killed = sum(1 for r in pipe.execute(raise_on_error=False) if r is True or r == 1)
        finally:
            conn.close()
        self.counts["client_kill"] += 1
        self.counts["connections_killed"] += int(killed)
        self.event("CLIENT KILL", target=target, connections=int(killed))
