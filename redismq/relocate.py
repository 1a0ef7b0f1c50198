"""Moving what a queue keeps besides its messages — its stream with the groups' positions,
dead letters, done records, dedup records, job results, counters — to the broker that
takes the queue over when its broker is removed."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import redis

from . import cluster
from .keys import QueueKeys

if TYPE_CHECKING:
    from .routing import Broker

SCAN_COUNT = 500


def glob_escape(text: str) -> str:
    """The text as a literal in a SCAN MATCH pattern."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


def copy_queue_state(src: Broker, dst: Broker, old: QueueKeys, new: QueueKeys) -> int:
    """Copy every key of a queue (DUMP/RESTORE, keeping time to live) from `src` to `dst`,
    renamed from `old`'s hash tag to `new`'s; returns how many keys were copied. The source
    keeps its copy. Not a hot path: run once per queue when a broker is removed."""
    node = cluster.server_of(src.redis, old.stream)
    copied = 0
    for raw in node.scan_iter(match=glob_escape(old.tag) + ":*", count=SCAN_COUNT):
        key = raw.decode()
        pipe = node.pipeline(transaction=False)
        pipe.dump(key)
        pipe.pttl(key)
        dumped, ttl = pipe.execute()
        if dumped is None or ttl == -2:  # expired meanwhile
            continue
        target = new.tag + key[len(old.tag) :]
        try:
            dst.redis.restore(target, max(0, ttl), dumped, replace=True)
        except redis.ResponseError as exc:
            raise redis.ResponseError(
                f"cannot copy {key} to broker {dst.name!r}: {exc} (the two servers may run "
                f"engines whose dump formats differ)"
            ) from None
        copied += 1
    return copied
