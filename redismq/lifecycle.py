"""The life of groups and topics after they were made: list a topic's groups, delete a
group, delete a topic — each refused, with the reason, while it would lose unfinished work
(unless forced)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from . import cluster
from .errors import RedisMQError
from .keys import turn
from .relocate import glob_escape
from .routing import routes_changed
from .status import live_workers, mark_unconsumed, topic_status

if TYPE_CHECKING:
    from .client import Client

log = logging.getLogger("redismq.lifecycle")
SCAN_COUNT = 500


class InUse(RedisMQError):
    """A group or topic that still holds unfinished work was not deleted (nothing changed)."""


def list_groups(client: Client, topic: str) -> list[dict[str, Any]]:
    """The groups registered for a topic with their counts (pending, lag, retrying, dead,
    done, ...) and `live`: whether some live worker consumes it."""
    with client.errors():
        client.topic(topic, create=False)
        status = topic_status(client, topic)
        mark_unconsumed([status], live_workers(client))
    return list(status["groups"])


def delete_group(client: Client, topic: str, group: str, *, force: bool = False) -> None:
    """Forget a group of a topic: its group on every stream, its retries, dead letters,
    done records and counters. Refused while it has pending, retrying or dead messages
    unless `force`. Afterwards nothing of it pins retention or counts toward a bound.
    (Stop its workers first: a running one registers the group again.)"""
    with client.errors():
        t = client.topic(topic, create=False)
        if group not in client.router.groups(topic):
            raise InUse(
                f"topic {topic!r} has no group {group!r} "
                f"(its groups: {', '.join(client.router.groups(topic)) or 'none'})"
            )
        if not force:
            row = next(g for g in topic_status(client, topic)["groups"] if g["name"] == group)
            held = {k: row[k] for k in ("pending", "retrying", "dead") if row[k]}
            if held:
                listed = ", ".join(f"{n} {k}" for k, n in held.items())
                raise InUse(
                    f"group {group!r} of {topic!r} still has {listed} message(s): let it "
                    f"finish, or purge its dead letters (redismq dlq purge {topic} --group "
                    f"{group}), or delete it anyway with --force"
                )
        for q in range(t.queues):
            k = client.router.queue_keys(topic, q)
            broker = client.router.queue_broker(t, q)
            broker.scripts.delete_group(
                keys=[
                    k.stream,
                    k.retry(group),
                    k.retry_stream(group),
                    k.dead(group),
                    k.done(group),
                    k.stats(group),
                    k.lease(group),
                    turn(k.stream, group),
                    k.takeovers(group),
                ],
                args=[group],
            )
        keys = client.router.keys
        pipe = client.meta.pipeline(transaction=True)
        pipe.srem(keys.groups(topic), group)
        routes_changed(pipe, keys)  # producers re-read the topic's groups (bounds)
        pipe.execute()
        client.router.invalidate()
    log.info("deleted group %r of topic %r", group, topic)


def delete_topic(client: Client, topic: str, *, force: bool = False) -> int:
    """Delete a topic: its registration and routes, then every key of its queues.

    Refused while any queue holds a message some group has not finished (undelivered,
    pending, delayed, retrying) unless `force`. Returns how many keys were deleted. A
    producer that sends to it afterwards creates it again (auto-creation).
    """
    from .brokers import unconsumed

    with client.errors():
        t = client.topic(topic, create=False)
        if not force:
            busy = {q: n for q in range(t.queues) if (n := unconsumed(client, topic, q))}
            if busy:
                total = sum(busy.values())
                raise InUse(
                    f"topic {topic!r} still holds {total} unfinished message(s) on "
                    f"{len(busy)} queue(s): let its groups finish, or delete it anyway "
                    f"with --force"
                )
        queues = [
            (client.router.queue_keys(topic, q), client.router.queue_broker(t, q))
            for q in range(t.queues)
        ]
        keys = client.router.keys
        client.router.meta_scripts.delete_topic(
            keys=[keys.topics, keys.routes, keys.routes_version, keys.groups(topic)],
            args=[topic, t.queues],
        )
        client.router.invalidate()
        deleted = 0
        for k, broker in queues:
            node: Any = broker.redis
            if broker.cluster:  # a Broker's client is typed as redis.Redis, a cluster's too
                node = cluster.node_client(node, k.stream)
            batch = []
            for raw in node.scan_iter(match=glob_escape(k.tag) + ":*", count=SCAN_COUNT):
                batch.append(raw)
                if len(batch) >= SCAN_COUNT:
                    deleted += node.delete(*batch)
                    batch = []
            if batch:
                deleted += node.delete(*batch)
    log.info("deleted topic %r (%d keys)", topic, deleted)
    return deleted
