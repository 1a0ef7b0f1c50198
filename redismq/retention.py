"""Trimming a topic's queues by its retention (`Client.trim`; a consumer trims the queues
it reads as it receives)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from .routing import batch_by_broker

if TYPE_CHECKING:
    from .client import Client


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
