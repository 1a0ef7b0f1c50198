"""What a dead worker process leaves behind, freed as soon as its supervisor sees it die:
the messages it held become claimable by the other consumers of its groups at once (not
after the visibility timeout), its queue leases of ordered groups are given back, its
consumers leave their groups once they hold nothing, and its heartbeat record goes."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable

from redismq import Client, Subscription
from redismq.keys import QueueKeys
from redismq.process import host_id
from redismq.retention import Retired, retire_consumers
from redismq.routing import text

log = logging.getLogger("redismq.supervisor")
# The idle time given to the entries of a dead consumer: past any visibility timeout, so
# that the next XAUTOCLAIM of any live consumer of the group takes them.
FREED_IDLE_MS = 24 * 3600 * 1000


class Reaper:
    """Frees what a dead worker process of this host left in the given subscriptions."""

    def __init__(self, client: Client, subscriptions: Iterable[Subscription]) -> None:
        self.client = client
        self.subscriptions = list(subscriptions)
        self.host = host_id()

    def reap(self, pid: int) -> Retired:
        """Free what process `pid` left (its consumers are named `host:pid:n`)."""
        prefix = f"{self.host}:{pid}:"
        retired = Retired()
        for s in self.subscriptions:
            retired.add(
                retire_consumers(
                    self.client,
                    s.topic,
                    s.group,
                    lambda name, pending, idle: name.startswith(prefix),
                    FREED_IDLE_MS,
                )
            )
            if s.ordered:
                self._give_back_leases(s, prefix)
        self.client.meta.hdel(self.client.router.keys.workers, f"{self.host}:{pid}")
        return retired

    def _give_back_leases(self, s: Subscription, prefix: str) -> None:
        """Ordered groups: give back the dead consumers' queue leases and drop them from
        the members counted for the fair share, so that live consumers take the queues at
        their next rebalance (and take over what is pending there first)."""
        t = self.client.topic(s.topic)
        # The queue sets a worker's consumers share (see Worker._queues_by_broker), and all.
        shares: dict[tuple[str, str | None], list[int]] = defaultdict(list)
        for q, name in enumerate(t.placement):
            shares[(name, t.shards.get(q))].append(q)
        meta = self.client.meta
        for queues in [*shares.values(), list(range(t.queues))]:
            key = self.client.router.keys.members(s.topic, s.group, ",".join(map(str, queues)))
            members: list[bytes] = meta.zrange(key, 0, -1)  # type: ignore[assignment]
            dead = [n for n in members if text(n).startswith(prefix)]
            if dead:
                meta.zrem(key, *dead)
        for q in range(t.queues):
            k: QueueKeys = self.client.router.queue_keys(s.topic, q)
            broker = self.client.router.queue_broker(t, q)
            holder = broker.redis.get(k.lease(s.group))
            if holder is not None and text(holder).startswith(prefix):
                broker.scripts.lease(keys=[k.lease(s.group)], args=["give", holder, 0])
