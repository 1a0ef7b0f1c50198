"""What a topic's queues keep: entries by the topic's retention (`Client.trim`), consumers
while they hold something or read. A consumer does both for the queues it reads as it
receives; a worker's supervisor retires the consumers of a child that died at once."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .routing import Broker, batch_by_broker, text

if TYPE_CHECKING:
    from .client import Client

# A consumer that holds nothing and has not read for this long leaves its group (one of a
# process that never closed it: killed, or careless). A live one that is retired is made
# again by its next read: nothing is lost.
CONSUMER_IDLE = 300.0


def trim(client: Client, topic: str, queues: Iterable[int] | None = None) -> tuple[int, int]:
    """Trim a topic's queues (default: all) by its retention; returns (trimmed, dropped)
    (see `Client.trim`)."""
    t = client.topic(topic, create=False)
    limit = min(t.retention, t.hard_cap) if t.hard_cap > 0 else t.retention
    trimmed = dropped = 0
    with client.errors():
        chosen = range(t.queues) if queues is None else queues
        for broker, indexes in batch_by_broker(t, list(chosen)).items():
            keys = [client.router.queue_keys(topic, q) for q in indexes]
            pipe = client.router.broker(broker).redis.pipeline(transaction=False)
            for k in keys:
                pipe.xlen(k.stream)
            # Only a stream longer than its retention can have anything to trim.
            calls = [
                ("trim", [k.stream, k.counters], [t.retention, t.hard_cap, *t.groups])
                for k, length in zip(keys, pipe.execute(), strict=True)
                if length > limit
            ]
            for a, b in client.router.broker(broker).scripts.run(calls) if calls else ():
                trimmed, dropped = trimmed + a, dropped + b
    return trimmed, dropped


@dataclass(slots=True)
class Retired:
    """What retiring consumers did: entries made claimable, consumers deleted."""

    expired: int = 0
    deleted: int = 0

    def add(self, other: Retired) -> None:
        self.expired += other.expired
        self.deleted += other.deleted


def consumer_info(row: dict[Any, Any]) -> tuple[str, int, int]:
    """(name, pending, idle ms) of a row of XINFO CONSUMERS."""
    return text(row["name"]), row["pending"], row["idle"]


def group_streams(
    client: Client, topic: str, group: str, queues: Iterable[int] | None = None
) -> dict[Broker, list[str]]:
    """The streams a group reads on a topic's queues (default: all), each queue's stream
    and the group's retry stream, by broker."""
    t = client.topic(topic)
    streams: dict[Broker, list[str]] = defaultdict(list)
    for q in range(t.queues) if queues is None else queues:
        k = client.router.queue_keys(topic, q)
        streams[client.router.queue_broker(t, q)] += [k.stream, k.retry_stream(group)]
    return streams


def retire_consumers(
    client: Client,
    topic: str,
    group: str,
    gone: Callable[[str, int, int], bool],
    idle_ms: int = 0,
    queues: Iterable[int] | None = None,
) -> Retired:
    """Retire the consumers of `group` on `topic`'s queues (default: all) for which
    `gone(name, pending, idle_ms)` is true: with `idle_ms`, the entries they hold become
    claimable at once; each one leaves the group on a stream where it holds nothing
    (atomically checked)."""
    retired = Retired()
    for broker, streams in group_streams(client, topic, group, queues).items():
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


def retire_idle_consumers(
    client: Client, topic: str, group: str, queues: Iterable[int] | None = None
) -> int:
    """Retire the consumers of `group` on `topic`'s queues that hold nothing and have not
    read for `CONSUMER_IDLE` seconds, but for the client's own open ones; returns how many
    left the group's streams."""
    idle_ms = int(CONSUMER_IDLE * 1000)
    own = {c.name for c in list(client.open_consumers)}

    def gone(name: str, pending: int, idle: int) -> bool:
        return pending == 0 and idle >= idle_ms and name not in own

    with client.errors():
        return retire_consumers(client, topic, group, gone, queues=queues).deleted
