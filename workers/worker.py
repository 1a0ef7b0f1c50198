"""One worker process: fetch-and-run threads per subscription, plus the housekeeping
components (lease keeper, time-limit watchdog, heartbeat, scheduler)."""

from __future__ import annotations

import functools
import logging
import os
import signal
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

from redismq import App, BrokerUnavailable, Consumer, Subscription
from redismq.brokers import warn_if_evicting
from redismq.hooks import Hooks
from redismq.middleware import middleware_hooks
from redismq.process import StopEvent, process_id, say_at_once
from redismq.processing import Counts

from .heartbeat import Heartbeat
from .housekeeping import Component, Housekeeper, PerBroker, safely
from .janitor import Janitor
from .leases import LeaseBalancer, LeaseKeeper
from .limits import Canceller, Watchdog
from .loop import Loop
from .routes import RouteWatcher
from .scheduler import Scheduler
from .slots import ConcurrentLoop, runs_async

log = logging.getLogger("redismq.worker")
RECONNECT_MAX = 5.0
# Exit code of a process that had to give up a thread stuck past its time limit: the
# supervisor replaces it.
EXIT_REPLACE = 3
# What a supervisor sends its children to stop them gracefully (never a forced exit).
STOP_SIGNAL = signal.SIGUSR1
# How long an idle fetch thread of a --burst worker waits before it looks whether the
# backlog is gone (and exits): shorter than the default block, so that a burst ends soon.
BURST_BLOCK = 0.25


def keys(subs: Iterable[Subscription]) -> set[tuple[str, str]]:
    return {(s.topic, s.group) for s in subs}


class Worker:
    """Consumes an app's subscriptions in one process until stopped (or idle, in burst mode)."""

    def __init__(
        self,
        app: App,
        *,
        topics: Iterable[str] | None = None,
        group: str | None = None,
        visibility_timeout: float = 30.0,
        concurrency: int = 1,
        count: int = 100,
        block: float = 1.0,
        burst: bool = False,
        grace: float = 30.0,
        hooks: Sequence[Hooks] = (),
        components: Sequence[Component] = (),
    ) -> None:
        wanted = set(topics or [])
        subs = [
            s
            for s in app.subscriptions.values()
            if (not wanted or s.topic in wanted) and (group is None or s.group == group)
        ]
        if not subs:
            raise ValueError("the app has no task or handler for the chosen topics and group")
        self.app = app
        self.subscriptions = subs
        self.client = app.client
        self.burst = burst
        self.block = block
        self.grace = grace
        self.replaced = False
        # Set when a signal asked this process to stop: then it is not started again.
        self.signalled = False
        self.stop_reason = ""  # what a signal handler would log (logged once stopping)
        # set by the signal handlers (install_signal_handlers)
        self.stopping = StopEvent()
        self.id = process_id()
        self.visibility_timeout = visibility_timeout
        self.concurrency = concurrency
        self.count = count
        self.hooks = [*hooks, *middleware_hooks(app.middleware)]
        self.loops = [
            loop
            for s in subs
            for queues in self._queues_by_broker(s.topic)
            for loop in self._loops(s, queues)
        ]
        for broker in {
            loop.consumer.queues[q].broker for loop in self.loops for q in loop.consumer.queues
        }:
            warn_if_evicting(broker.redis, f"{broker.name!r}")
        heartbeat = Heartbeat(
            self.client,
            self.id,
            self,
            {
                "topics": sorted({s.topic for s in subs}),
                "groups": sorted({s.group for s in subs}),
                "concurrency": concurrency,
            },
        )
        periodics = [p for p in app.periodics if (p.task.topic, p.task.group) in keys(subs)]
        self.housekeeper = Housekeeper(
            [
                # Per broker: a broker that hangs delays only its own leases and limits.
                PerBroker(self.loops, lambda loops: LeaseKeeper(loops, visibility_timeout)),
                PerBroker(self.loops, lambda loops: LeaseBalancer(loops, visibility_timeout)),
                PerBroker(self.loops, lambda loops: Watchdog(loops, self._replace)),
                PerBroker(self.loops, lambda loops: Canceller(loops, self._replace)),
                RouteWatcher(self),
                Janitor(self.client, subs),
                heartbeat,
                *([Scheduler(self.client, periodics)] if periodics else []),
                *components,
            ]
        )

    def _loops(self, sub: Subscription, queues: list[int]) -> list[Loop]:
        """The fetch threads of one subscription's queues on one broker: one per slot, or
        one for all slots when its jobs are coroutines (they share one event loop)."""

        def consumer() -> Consumer:
            return self.client.consumer(
                sub.topic,
                sub.group,
                visibility_timeout=self.visibility_timeout,
                queues=queues,
                ordered=sub.ordered,
            )

        if self.concurrency > 1 and runs_async(sub):
            return [ConcurrentLoop(consumer(), sub, self.concurrency, self.hooks)]
        return [Loop(consumer(), sub, self.count, self.hooks) for _ in range(self.concurrency)]

    def _queues_by_broker(self, topic: str) -> list[list[int]]:
        """The topic's queue numbers grouped by broker: each group gets its own fetch
        threads, so that every broker has a blocking read of its own. On a Redis Cluster
        broker, by hash tag: one XREADGROUP may only name keys of one slot, and a topic's
        queues on one master share one tag (a slot move or a failover moves the whole
        group; the cluster client follows it, the grouping stays)."""
        t = self.client.topic(topic, create=True)
        groups: dict[tuple[str, str | None], list[int]] = {}
        for q, broker in enumerate(t.placement):
            groups.setdefault((broker, t.shards.get(q)), []).append(q)
        return list(groups.values())

    @property
    def counts(self) -> Counts:
        total = Counts()
        for loop in self.loops:
            total.add(loop.counts)
        return total

    def in_flight(self) -> list[str]:
        """Ids of the messages this process holds now."""
        return [m.id for loop in self.loops for m in loop.held()]

    def run(self) -> Counts:
        """Run until stop() (or, in burst mode, until nothing is left); returns the counts.

        The hooks' (and the app's middleware's) `on_worker_start` runs before the first
        fetch, `on_worker_stop` once the fetch threads are done."""
        for hook in self.hooks:
            hook.on_worker_start(self)
        for loop in self.loops:
            self._start(loop)
        self.housekeeper.start()
        try:
            self._join()
        finally:
            self.stopping.set()
            self.housekeeper.stop()
            for loop in self.loops:
                safely(loop.consumer.close)
            for hook in self.hooks:
                safely(functools.partial(hook.on_worker_stop, self))
        return self.counts

    def _start(self, loop: Loop) -> None:
        loop.thread = threading.Thread(
            target=self._fetch, args=(loop,), name=f"fetch-{len(self.loops)}", daemon=True
        )
        loop.thread.start()

    def _join(self) -> None:
        """Wait for the fetch threads; after a stop, at most `grace` seconds more."""
        deadline = None
        while True:
            if deadline is None and self.stopping.is_set():
                deadline = time.monotonic() + self.grace
                if self.stop_reason:
                    log.info("%s", self.stop_reason)
            alive = [
                loop.thread
                for loop in list(self.loops)
                if loop.thread is not None and loop.thread.is_alive() and not loop.runner.abandoned
            ]
            if not alive:
                return
            if deadline is not None and time.monotonic() > deadline:
                log.warning("grace period over: leaving unfinished jobs to lease expiry")
                return
            alive[0].join(0.1)

    def refresh_routes(self) -> None:
        """Follow route changes (new queues, queues moved off a removed broker): start
        fetch threads for new per-broker queue sets, retire those of sets that are gone."""
        for s in self.subscriptions:
            wanted = {tuple(q) for q in self._queues_by_broker(s.topic)}
            mine = [
                loop for loop in self.loops if loop.runner.subscription is s and not loop.retired
            ]
            current = {tuple(sorted(loop.consumer.queues)) for loop in mine}
            for loop in mine:
                if tuple(sorted(loop.consumer.queues)) not in wanted:
                    loop.retired = True
            for queues in sorted(wanted - current):
                log.info("routes of %s changed: now also consuming queues %s", s.topic, queues)
                for loop in self._loops(s, list(queues)):
                    self.loops.append(loop)
                    self._start(loop)

    def stop(self) -> None:
        """Stop fetching; running messages finish, fetched unstarted ones are handed back."""
        self.stopping.set()

    def _replace(self) -> None:
        """A thread is stuck past a time limit: stop, so the supervisor starts a fresh process."""
        self.replaced = True
        self.stop()

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT stop gracefully; a second one exits at once (leases then expire).

        STOP_SIGNAL, which a supervisor sends, only ever stops gracefully: under systemd or
        `kill -TERM -PGID` a child gets both the signal and its supervisor's, and that is
        one stop, not two (the supervisor forces with SIGKILL).

        The handlers act and log nothing (the stop is logged by `_join`): the log's lock
        may be held by the code they interrupt, or by a thread blocked on a full pipe.
        """
        received: list[int] = []

        def handle(signum: int, frame: Any) -> None:
            if received:
                say_at_once("second signal: exiting now")
                os._exit(1)
            received.append(signum)
            self.signalled = True
            self.stop_reason = f"signal {signum}: finishing running work, then exiting"
            self.stop()

        def handle_stop(signum: int, frame: Any) -> None:
            self.signalled = True
            if not self.stopping.is_set():
                self.stop_reason = "stop requested by the supervisor: finishing running work"
            self.stop()

        signal.signal(signal.SIGTERM, handle)
        signal.signal(signal.SIGINT, handle)
        signal.signal(STOP_SIGNAL, handle_stop)

    def _fetch(self, loop: Loop) -> None:
        pause = 0.1
        block = min(self.block, BURST_BLOCK) if self.burst else self.block
        while not self.stopping.is_set() and not loop.retired:
            try:
                loop.step(block, self.stopping)
                if self.burst and loop.idle and loop.consumer.backlog() == 0:
                    break
                pause = 0.1
            except BrokerUnavailable as exc:
                log.error("%s (retrying in %.1fs)", exc, pause)
                self.stopping.wait(pause)
                pause = min(RECONNECT_MAX, pause * 2)
            except Exception:
                log.exception("unexpected error in the fetch loop of %s", loop.consumer)
                self.stopping.wait(1.0)
        safely(loop.finish)  # what the last batch finished
        if loop.retired:
            safely(loop.consumer.close)
