"""What a dead worker process leaves behind, freed as soon as its supervisor sees it die:
the messages it held become claimable by the other consumers of its groups at once (not
after the visibility timeout), its queue leases of ordered groups are given back, its
consumers leave their groups once they hold nothing, and its heartbeat record goes."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from redismq import Client, Subscription
from redismq.keys import QueueKeys
from redismq.process import host_id
from redismq.routing import Broker

log = logging.getLogger("redismq.supervisor")
# The idle time given to the entries of a dead consumer: past any visibility timeout, so
# that the next XAUTOCLAIM of any live consumer of the group takes them.
FREED_IDLE_MS = 24 * 3600 * 1000


@dataclass(slots=True)
class Retired:
    """What retiring consumers did: entries made claimable, consumers deleted."""

    expired: int = 0
    deleted: int = 0

    def add(self, other: Retired) -> None:
        self.expired += other.expired
        self.deleted += other.deleted


def text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def consumer_info(row: dict[Any, Any]) -> tuple[str, int, int]:
    """(name, pending, idle ms) of a row of XINFO CONSUMERS."""
    return text(row["name"]), row["pending"], row["idle"]


def group_streams(client: Client, topic: str, group: str) -> dict[Broker, list[str]]:
    """The streams a group reads on a topic (each queue's stream and the group's retry
    stream), by broker."""
    t = client.topic(topic)
    streams: dict[Broker, list[str]] = defaultdict(list)
    for q in range(t.queues):
        k = client.router.queue_keys(topic, q)
        streams[client.router.queue_broker(t, q)] += [k.stream, k.retry_stream(group)]
    return streams


def retire_consumers(
    client: Client,
    topic: str,
    group: str,
    gone: Callable[[str, int, int], bool],
    idle_ms: int = 0,
) -> Retired:
    """Retire the consumers of `group` on `topic` for which `gone(name, pending, idle_ms)`
    is true: with `idle_ms`, the entries they hold become claimable at once; each one
    leaves the group on a stream where it holds nothing (atomically checked)."""
    retired = Retired()
    for broker, streams in group_streams(client, topic, group).items():
        pipe = broker.redis.pipeline(transaction=False)
        for stream in streams:
            pipe.xinfo_consumers(stream, group)
        calls = []
        for stream, reply in zip(streams, pipe.execute(raise_on_error=False), strict=True):
            if isinstance(reply, Exception):  # no such stream or group (yet)
                continue
            for name, pending, idle in map(consumer_info, reply):
                if gone(name, pending, idle):
                    calls.append(("retire_consumer", [stream], [group, name, idle_ms]))
        if calls:
            for expired, deleted in broker.scripts.run(calls):
                retired.add(Retired(expired, deleted))
    return retired


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
