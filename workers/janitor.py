"""The janitor: prunes what dead processes leave behind in Redis, so that nothing only grows:
heartbeat records of workers that stopped beating and ids of `job.result()` waiters that
died. (Consumers of dead processes leave their groups by the consumers' own reads:
`redismq.retention`.)"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from redismq import Client, Subscription
from redismq.job import WAITER_TIMEOUT

from .housekeeping import Component

log = logging.getLogger("redismq.worker")
# A heartbeat record this much older than now (by the janitor's clock) belongs to a dead
# worker: four times the window in which `status` shows a worker, to tolerate clock skew.
BEAT_TIMEOUT = 60.0


class Janitor(Component):
    """Prunes, every `interval` seconds, the records of dead workers and dead waiters on the
    queues of the topics of `subscriptions`.

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
        waiter_timeout: float = WAITER_TIMEOUT,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.groups = sorted({(s.topic, s.group) for s in subscriptions})
        self.beat_timeout = beat_timeout
        self.waiter_timeout = waiter_timeout
        self.clock = clock

    def tick(self) -> None:
        self.prune_workers()
        self.prune_waiters()

    def prune_workers(self) -> None:
        """Delete the heartbeat records of workers that stopped beating."""
        key = self.client.router.keys.workers
        cutoff = self.clock() - self.beat_timeout
        dead = [w for w, raw in self.client.meta.hgetall(key).items() if _last_beat(raw) < cutoff]
        if dead:
            self.client.meta.hdel(key, *dead)
            log.info("pruned the records of %d worker(s) that stopped beating", len(dead))

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
