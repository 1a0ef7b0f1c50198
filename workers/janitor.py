"""The janitor: prunes what dead processes leave behind in Redis, so that nothing only grows:
heartbeat records of workers that stopped beating, group consumers of dead processes (once
they hold nothing: deleting a consumer drops what it holds), and ids of `job.result()`
waiters that died."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from redismq import Client, Subscription
from redismq.job import WAITER_TIMEOUT

from .housekeeping import Component
from .reaper import retire_consumers, text

log = logging.getLogger("redismq.worker")
# A heartbeat record this much older than now (by the janitor's clock) belongs to a dead
# worker: four times the window in which `status` shows a worker, to tolerate clock skew.
BEAT_TIMEOUT = 60.0
# A consumer of no live worker that did nothing for this long and holds nothing is deleted
# (a live consumer that is deleted is re-created by its next read: nothing is lost).
CONSUMER_IDLE = 300.0


class Janitor(Component):
    """Prunes, every `interval` seconds, the records of dead workers, the consumers of dead
    processes in the groups of `subscriptions`, and dead waiters on their topics' queues.

    `clock` gives the time (seconds since the epoch) against which heartbeats and waiters
    are judged; tests move it.
    """

    interval = 60.0

    def __init__(
        self,
        client: Client,
        subscriptions: Iterable[Subscription],
        *,
        beat_timeout: float = BEAT_TIMEOUT,
        consumer_idle: float = CONSUMER_IDLE,
        waiter_timeout: float = WAITER_TIMEOUT,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.groups = sorted({(s.topic, s.group) for s in subscriptions})
        self.beat_timeout = beat_timeout
        self.consumer_idle_ms = int(consumer_idle * 1000)
        self.waiter_timeout = waiter_timeout
        self.clock = clock

    def tick(self) -> None:
        live = self.prune_workers()
        self.prune_consumers(live)
        self.prune_waiters()

    def prune_workers(self) -> set[str]:
        """Delete the heartbeat records of workers that stopped beating; returns the ids of
        the others."""
        key = self.client.router.keys.workers
        cutoff = self.clock() - self.beat_timeout
        live, dead = set(), []
        for worker_id, raw in self.client.meta.hgetall(key).items():
            if _last_beat(raw) >= cutoff:
                live.add(text(worker_id))
            else:
                dead.append(worker_id)
        if dead:
            self.client.meta.hdel(key, *dead)
            log.info("pruned the records of %d worker(s) that stopped beating", len(dead))
        return live

    def prune_consumers(self, live: set[str]) -> None:
        """Delete the group consumers of processes that are not live workers, once they
        hold nothing and have been idle for a while."""

        def gone(name: str, pending: int, idle: int) -> bool:
            worker_id = name.rpartition(":")[0]
            return pending == 0 and idle >= self.consumer_idle_ms and worker_id not in live

        deleted = 0
        for topic, group in self.groups:
            deleted += retire_consumers(self.client, topic, group, gone).deleted
        if deleted:
            log.info("deleted %d consumer(s) of dead processes", deleted)

    def prune_waiters(self) -> None:
        """Forget waiters of `job.result()` that stopped renewing their place (they died)."""
        cutoff_ms = int((self.clock() - self.waiter_timeout) * 1000)
        for topic in sorted({topic for topic, _ in self.groups}):
            t = self.client.topic(topic)
            by_broker: dict[Any, list[str]] = {}
            for q in range(t.queues):
                broker = self.client.router.queue_broker(t, q)
                by_broker.setdefault(broker, []).append(
                    self.client.router.queue_keys(topic, q).waiting
                )
            for broker, keys in by_broker.items():
                pipe = broker.redis.pipeline(transaction=False)
                for key in keys:
                    pipe.zremrangebyscore(key, "-inf", f"({cutoff_ms}")
                pipe.execute()


def _last_beat(raw: bytes | str) -> float:
    """When a heartbeat record was written (0 for a record that cannot be read)."""
    try:
        return float(json.loads(raw)["last_beat"])
    except (ValueError, KeyError, TypeError):
        return 0.0
