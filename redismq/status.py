"""A read-only snapshot of the whole system: brokers, topics with their groups, workers."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

import redis
from redis.exceptions import RedisClusterException

from .backlog import GroupCounts, read_queue, topic_backlog
from .brokers import unconsumed
from .cluster import master_of_tag, topology
from .errors import RedisMQError
from .relay import outbox_status
from .routing import ACTIVE
from .urls import mask_url

if TYPE_CHECKING:
    from .client import Client

BEAT_EVERY = 5.0
MISSED_BEATS = 3


def live_workers(client: Client) -> list[dict[str, Any]]:
    """Records of the workers that beat within the last MISSED_BEATS beats."""
    now = time.time()
    live = []
    for raw in client.meta.hvals(client.router.keys.workers):
        try:
            record = json.loads(raw)
            if now - float(record["last_beat"]) <= BEAT_EVERY * MISSED_BEATS:
                live.append(record)
        except (ValueError, KeyError, TypeError):
            continue
    return sorted(live, key=lambda r: r["id"])


def broker_status(client: Client) -> list[dict[str, Any]]:
    """Each broker: URL, up, role; a Redis Cluster broker also lists its masters (their
    replicas and which queues each holds)."""
    out = []
    for name in client.router.broker_names():
        broker = client.router.broker(name)
        url = broker.url or client.url
        row: dict[str, Any] = {"name": name, "url": mask_url(url), "up": False, "role": None}
        try:
            if broker.cluster:
                row.update(up=True, role="cluster", cluster=cluster_status(client, name))
            else:
                info = broker.redis.info("replication")
                row.update(up=True, role=info.get("role"))
        except (redis.RedisError, RedisClusterException) as exc:
            row["error"] = str(exc)
        out.append(row)
    return out


def cluster_status(client: Client, name: str) -> list[dict[str, Any]]:
    """The masters of a Redis Cluster broker now: address, slot ranges, replicas, and the
    queues (``topic#q``) each holds."""
    broker = client.router.broker(name)
    masters = topology(broker.redis)  # type: ignore[arg-type]
    held: dict[str, list[str]] = {m["node"]: [] for m in masters}
    for t in client.router.topic_names():
        topic = client.router.topic(t)
        for q, placed in enumerate(topic.placement):
            shard = topic.shards.get(q)
            if placed == name and shard is not None:
                node = master_of_tag(masters, shard)
                if node is not None:
                    held[node].append(f"{t}#{q}")
    return [{**m, "queues": held[m["node"]]} for m in masters]


def topic_status(client: Client, name: str) -> dict[str, Any]:
    """Exact counts of one topic and each of its groups, summed over its queues (the
    backlog as redismq.backlog defines it)."""
    topic = client.router.topic(name)
    groups = client.router.groups(name)
    length = delayed = dropped = 0
    per_group = {g: GroupCounts() for g in groups}
    unreachable: list[int] = []
    for q in range(topic.queues):
        r = client.router.queue_broker(topic, q).redis
        try:
            counts = read_queue(r, client.router.queue_keys(name, q), groups)
        except redis.RedisError:  # its broker is down: the other queues are still shown
            unreachable.append(q)
            continue
        length += counts.length
        delayed += counts.delayed
        dropped += counts.dropped
        for g, c in counts.groups.items():
            per_group[g].add(c)
    return {
        "name": name,
        "queues": topic.queues,
        "length": length,
        "delayed": delayed,
        "dropped": dropped,
        "backlog": topic_backlog(length, delayed, per_group.values()),
        "max_backlog": topic.max_backlog,
        "unreachable_queues": unreachable,
        "groups": [
            {"name": g, **{f: getattr(c, f) for f in GROUP_FIELDS}} for g, c in per_group.items()
        ],
    }


GROUP_FIELDS = ("pending", "lag", "retrying", "retried", "dead", "done", "duplicates", "consumers")


def snapshot(client: Client) -> dict[str, Any]:
    """Brokers, topics (with per-group counts) and live workers, as plain data.

    A topic nobody consumes has ``no_group``; a group no live worker consumes has
    ``live: false``."""
    with client.errors():
        data = {
            "brokers": broker_status(client),
            "topics": [topic_status(client, t) for t in client.router.topic_names()],
            "workers": live_workers(client),
            "outboxes": outbox_status(client),
        }
    mark_unconsumed(data["topics"], data["workers"])
    return data


def mark_unconsumed(topics: list[dict[str, Any]], workers: list[dict[str, Any]]) -> None:
    """Mark each topic with no group (``no_group``) and each group that no live worker
    consumes (``live``), from the workers' heartbeats."""
    live = {(t, g) for w in workers for t in w.get("topics") or [] for g in w.get("groups") or []}
    for t in topics:
        t["no_group"] = not t["groups"]
        for g in t["groups"]:
            g["live"] = (t["name"], g["name"]) in live


def master_of(broker: Any, shard: str) -> str | None:
    """The master of a Redis Cluster broker that serves a queue's hash tag now."""
    return master_of_tag(topology(broker.redis), shard)


def describe_topic(client: Client, name: str) -> dict[str, Any]:
    """A topic's queues with their broker, broker state, length and backlog.

    A broker that does not answer costs one error, not one per queue: its queues are
    reported as unreachable.
    """
    router = client.router
    with client.errors():
        t = client.topic(name, create=False)
        states = router.states()
        version = int(router.meta.get(router.keys.routes_version) or 0)
    failed: dict[str, str] = {}
    queues = []
    for q, broker in enumerate(t.placement):
        row: dict[str, Any] = {"queue": q, "broker": broker, "state": states.get(broker, ACTIVE)}
        if broker not in failed:
            try:
                with client.errors():
                    found = router.queue_broker(t, q)
                    if found.shard is not None:  # a Redis Cluster: the master of its slot
                        row.update(shard=found.shard, master=master_of(found, found.shard))
                    r = found.redis
                    row["length"] = r.xlen(router.queue_keys(name, q).stream)
                    row["backlog"] = unconsumed(client, name, q)
            except (redis.RedisError, RedisMQError) as exc:
                failed[broker] = str(exc)
        if broker in failed:
            row.update(length=None, backlog=None, error=failed[broker])
        queues.append(row)
    return {"name": t.name, "route_version": version, "queues": queues}
