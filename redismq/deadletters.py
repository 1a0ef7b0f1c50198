"""Reading and replaying a group's dead-letter streams."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .message import StreamEntry, stream_entries
from .routing import Topic

if TYPE_CHECKING:
    from .client import Client

# Dead letters deleted per script call by a purge.
PURGE_PAGE = 500


@dataclass(slots=True)
class DeadLetter:
    """A message that a group gave up on, with the reason."""

    id: str
    topic: str
    queue: int
    group: str
    reason: str
    attempts: int
    failed_at: int
    body: Any
    entry_id: str
    fields: dict[str, str] = field(default_factory=dict)
    traceback: str = ""


def _text(value: bytes | None) -> str:
    return value.decode("utf-8", "replace") if value is not None else ""


def _body(fields: dict[bytes, bytes]) -> Any:
    raw = fields.get(b"body")
    if raw is None or fields.get(b"enc") == b"raw":
        return raw
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def read_dead_letters(client: Client, topic: Topic, group: str, count: int) -> list[DeadLetter]:
    """Up to `count` dead letters per queue, oldest first within a queue."""
    out: list[DeadLetter] = []
    for q in range(topic.queues):
        keys = client.router.queue_keys(topic.name, q)
        broker = client.router.queue_broker(topic, q)
        for entry_id, f in stream_entries(broker.redis.xrange(keys.dead(group), count=count)):
            out.append(
                DeadLetter(
                    id=_text(f.get(b"id")) or _text(f.get(b"dead_entry")),
                    topic=topic.name,
                    queue=q,
                    group=group,
                    reason=_text(f.get(b"dead_reason")),
                    attempts=int(f.get(b"dead_attempts", 0)),
                    failed_at=int(f.get(b"dead_at", 0)),
                    body=_body(f),
                    entry_id=entry_id.decode(),
                    fields={_text(k): _text(v) for k, v in f.items()},
                    traceback=_text(f.get(b"dead_traceback")),
                )
            )
    out.sort(key=lambda d: d.failed_at)
    return out


def replay(client: Client, topic: Topic, group: str, ids: Iterable[str] | None, count: int) -> int:
    """Put dead letters back on the group's retry streams (those of the wanted message
    ids, else up to `count` per queue, oldest first); returns how many."""
    wanted = set(ids) if ids is not None else None
    total = 0
    for q in range(topic.queues):
        keys = client.router.queue_keys(topic.name, q)
        broker = client.router.queue_broker(topic, q)
        dead = keys.dead(group)
        if wanted is None:
            rows = stream_entries(broker.redis.xrange(dead, count=count))
        else:
            rows = [
                row for row in stream_entries(broker.redis.xrange(dead)) if _wanted(row, wanted)
            ]
        if not rows:
            continue
        jobs = []
        for _, f in rows:
            message_id = _text(f.get(b"id"))
            jobs += [keys.job(message_id), keys.outcome(message_id)]
        total += broker.scripts.replay(
            keys=[dead, keys.retry_stream(group), keys.stats(group), *jobs],
            args=[entry_id.decode() for entry_id, _ in rows],
        )
    return total


def purge(client: Client, topic: Topic, group: str, ids: Iterable[str] | None) -> int:
    """Delete dead letters of a group (all, or those with these message ids); returns how
    many. Their step marks get the done window."""
    wanted = set(ids) if ids is not None else None
    total = 0
    for q in range(topic.queues):
        keys = client.router.queue_keys(topic.name, q)
        r = client.router.queue_broker(topic, q).redis
        last = stream_entries(r.xrevrange(keys.dead(group), count=1))
        start = "-"
        while last:
            rows = stream_entries(r.xrange(keys.dead(group), start, last[0][0], count=PURGE_PAGE))
            if not rows:
                break
            start = "(" + rows[-1][0].decode()
            if wanted is not None:
                rows = [row for row in rows if _wanted(row, wanted)]
            if not rows:
                continue
            steps = [keys.steps(group, _text(f[b"id"])) for _, f in rows if f.get(b"id")]
            total += client.router.queue_broker(topic, q).scripts.purge(
                keys=[keys.dead(group), keys.stats(group), *steps],
                args=[client.done_ttl_ms, *[e.decode() for e, _ in rows]],
            )
    return total


def _wanted(row: StreamEntry, wanted: set[str]) -> bool:
    """Whether a dead letter's message id (or entry id) is wanted."""
    entry_id, f = row
    return _text(f.get(b"id")) in wanted or entry_id.decode() in wanted
