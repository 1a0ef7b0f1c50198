"""The broker registry kept by the NameServer in the meta Redis: add, list, drain, remove
brokers, and add queues to topics. Every change bumps the route version, so clients
re-read their routes."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import redis

from .backlog import read_queue
from .cluster import choose_shards, is_cluster, master_ranges
from .errors import InvalidMessage, RedisMQError
from .keys import QueueKeys
from .routing import (
    ACTIVE,
    DRAINING,
    REFRESH_INTERVAL,
    place,
    queue_name,
    rendezvous,
    route_fields,
    routes_changed,
    topic_record,
)
from .urls import check_url, connect, mask_url
from .validation import check_topic_name

if TYPE_CHECKING:
    from .client import Client
    from .routing import Topic


log = logging.getLogger("redismq.brokers")
# How long a broker must have been draining before it can be removed: every client re-reads
# broker states at least every REFRESH_INTERVAL, so after this none sends to it any more.
DRAIN_SETTLE = 2 * REFRESH_INTERVAL


class BrokerError(RedisMQError):
    """A broker command that cannot be carried out (nothing was changed)."""


@dataclass(slots=True)
class BrokerInfo:
    """A registered broker and its last known health."""

    name: str
    url: str
    replicas: list[str] = field(default_factory=list)
    state: str = ACTIVE
    health: dict[str, Any] = field(default_factory=dict)

    def public(self) -> dict[str, Any]:
        """As plain data with passwords masked."""
        return {
            "name": self.name,
            "url": mask_url(self.url),
            "replicas": [mask_url(u) for u in self.replicas],
            "state": self.state,
            "health": self.health,
        }


def list_brokers(client: Client) -> list[BrokerInfo]:
    """Registered brokers with their health, sorted by name."""
    keys = client.router.keys
    with client.errors():
        pipe = client.meta.pipeline(transaction=False)
        pipe.hgetall(keys.brokers)
        pipe.hgetall(keys.broker_health)
        records, health = pipe.execute()
    out = []
    for raw_name, raw in sorted(records.items()):
        record = json.loads(raw)
        out.append(
            BrokerInfo(
                name=raw_name.decode(),
                url=record["url"],
                replicas=record.get("replicas", []),
                state=record.get("state", ACTIVE),
                health=json.loads(health[raw_name]) if raw_name in health else {},
            )
        )
    return out


def _record(client: Client, name: str) -> dict[str, Any]:
    raw = client.meta.hget(client.router.keys.brokers, name)
    if raw is None:
        known = ", ".join(b.name for b in list_brokers(client)) or "none"
        raise BrokerError(f"broker {name!r} is not registered (registered: {known})")
    return json.loads(raw)


def _set(client: Client, mode: str, name: str, record: dict[str, Any] | None = None) -> int:
    keys = client.router.keys
    value = json.dumps(record) if record is not None else ""
    changed = client.router.meta_scripts.registry_set(
        keys=[keys.brokers, keys.routes_version],
        args=[mode, name, value],
    )
    client.router.invalidate()
    return int(changed)


def add_broker(client: Client, name: str, url: str, replicas: list[str] | None = None) -> None:
    """Register a broker (its master URL and optional replica URLs) after checking that it
    answers. Existing queues stay where they are; new queues may be placed on it."""
    check_topic_name(name)
    urls = [url, *(replicas or [])]
    for u in urls:
        check_url(u)
    with client.errors():
        taken = {u: b.name for b in list_brokers(client) for u in [b.url, *b.replicas]}
    for u in urls:
        if u in taken and taken[u] != name:
            raise BrokerError(f"{mask_url(u)} is registered already, as broker {taken[u]!r}")
    for u in urls:
        _ping(u)
    record = {"url": url, "replicas": list(replicas or []), "state": ACTIVE, "added": time.time()}
    with client.errors():
        if not _set(client, "nx", name, record):
            raise BrokerError(f"a broker named {name!r} is registered already")


def _ping(url: str) -> None:
    conn = connect(url, socket_timeout=5.0)
    try:
        conn.ping()
        warn_if_evicting(conn, mask_url(url))
    except redis.RedisError as exc:
        raise BrokerError(f"broker at {mask_url(url)} does not answer: {exc}") from None
    finally:
        conn.close()


def warn_if_evicting(conn: redis.Redis, where: str) -> bool:
    """Log a warning when a broker may evict keys (it can silently drop queued work);
    True if it may. A user without CONFIG rights gets no warning."""
    try:
        if is_cluster(conn):  # every master must keep its queued work
            # RedisCluster answers per node; redis-py types a single node's answer
            replies: dict[Any, dict[str, str]] = conn.config_get(  # type: ignore[assignment]
                "maxmemory-policy",
                target_nodes=conn.get_primaries(),  # type: ignore[attr-defined]
            )
            policies = {r.get("maxmemory-policy", "noeviction") for r in replies.values()}
        else:
            policies = {conn.config_get("maxmemory-policy").get("maxmemory-policy") or "noeviction"}
    except redis.ResponseError:
        return False
    policies.discard("noeviction")
    if not policies:
        return False
    policy = ", ".join(sorted(policies))
    log.warning(
        "broker %s has maxmemory-policy %s: it may silently drop queued messages "
        "(set maxmemory-policy noeviction)",
        where,
        policy,
    )
    return True


def drain_broker(client: Client, name: str) -> None:
    """Make a broker's queues read-only: no new sends go there, consumers empty them."""
    with client.errors():
        record = _record(client, name)
        if record.get("state", ACTIVE) != DRAINING:
            record["state"] = DRAINING
            record["drained"] = _meta_time(client)
            _set(client, "xx", name, record)


def _meta_time(client: Client) -> float:
    """The meta Redis clock (one clock for every process that compares drain times)."""
    seconds, micros = client.meta.time()
    return seconds + micros / 1e6


def undrain_broker(client: Client, name: str) -> None:
    """Let sends go to a drained broker again."""
    with client.errors():
        record = _record(client, name)
        record["state"] = ACTIVE
        record.pop("drained", None)
        _set(client, "xx", name, record)


def remove_broker(client: Client, name: str) -> None:
    """Unregister a broker; refused while any of its queues holds unconsumed messages, or,
    if it holds queues, unless it is drained. Right after a drain it first waits until
    DRAIN_SETTLE seconds have passed (every client re-reads broker states within
    REFRESH_INTERVAL, so none still sends to it).

    Its (empty) queues are placed on the remaining brokers, and what they keep — dead
    letters, done records, dedup records, job results, the groups' positions — is copied
    there first, so it stays readable. The removed broker keeps its own copy.
    """
    with client.errors():
        record = _record(client, name)
        held = _held(client, name)
        _refuse_if_busy(client, name, held)
        if held and record.get("state", ACTIVE) != DRAINING:
            raise BrokerError(
                f"broker {name!r} holds {len(held)} queue(s) and is not drained: "
                f"drain it first (redismq broker drain {name}), let consumers empty it, "
                f"then remove it"
            )
        age = _meta_time(client) - record.get("drained", 0.0)
        if held and age < DRAIN_SETTLE:
            log.info("broker %r was drained %.1fs ago: waiting for clients to see it", name, age)
            time.sleep(DRAIN_SETTLE - age)
            _refuse_if_busy(client, name, held)  # what was sent while clients learned of it
        others = [b for b in client.router.placeable() if b != name]
        if held and not others:
            raise BrokerError(f"broker {name!r} holds queues and no other broker can take them")
        try:
            records = _move_queues(client, name, held, others)
        except redis.ResponseError as exc:
            raise BrokerError(
                f"broker {name!r} was not removed: {exc}; move its queues' dead letters "
                f"and results by hand, or replay/purge them (redismq dlq), then try again"
            ) from None
        keys = client.router.keys
        pipe = client.meta.pipeline(transaction=True)
        for (t, q), target in held.items():
            pipe.hset(keys.routes, queue_name(t, q), target)
        for t, record in records.items():
            pipe.hset(keys.topics, t, json.dumps(record))
        routes_changed(pipe, keys)
        pipe.execute()
        _set(client, "del", name)
        # a broker added again later under this name must not inherit this one's health
        client.meta.hdel(keys.broker_health, name)


def _held(client: Client, name: str) -> dict[tuple[str, int], str]:
    """The queues a broker holds, as stored now (not as cached)."""
    client.router.invalidate()
    return {
        (t, q): ""
        for t in client.router.topic_names()
        for q, broker in enumerate(client.router.topic(t).placement)
        if broker == name
    }


def _refuse_if_busy(client: Client, name: str, held: dict[tuple[str, int], str]) -> None:
    busy = {f"{t}#{q}": n for t, q in held if (n := unconsumed(client, t, q))}
    if busy:
        listed = ", ".join(f"{k} ({n})" for k, n in sorted(busy.items()))
        raise BrokerError(
            f"broker {name!r} still holds unconsumed messages: {listed} "
            f"(drain it first: redismq broker drain {name})"
        )


def _move_queues(
    client: Client, name: str, held: dict[tuple[str, int], str], others: list[str]
) -> dict[str, dict[str, Any]]:
    """Choose each held queue's new broker (in `held`), copy the queue's state there, and
    return the topic records whose hash tags changed (a queue moved onto or off a cluster)."""
    from .relocate import copy_queue_state

    router = client.router
    records: dict[str, dict[str, Any]] = {}
    for t, q in held:
        held[(t, q)] = rendezvous(others, queue_name(t, q))
    for t in sorted({t for t, _ in held}):
        topic = router.topic(t)
        record = topic_record(t, client.meta.hget(router.keys.topics, t))
        shards = dict(topic.shards)
        for (tt, q), target in held.items():
            if tt != t:
                continue
            dst = router.broker(target)
            shards.pop(q, None)
            if dst.cluster:
                mine = {p: s for p, s in shards.items() if topic.placement[p] == target}
                ranges = master_ranges(dst.redis.cluster_slots())  # type: ignore[attr-defined]
                shards.update(choose_shards(ranges, t, [q], mine))
            old = router.queue_keys(t, q)
            new = QueueKeys(router.namespace, t, q, shards.get(q))
            copied = copy_queue_state(router.queue_broker(topic, q), dst, old, new)
            log.info("moved %d key(s) of queue %s#%d to broker %r", copied, t, q, target)
        if shards != topic.shards:
            record["shards"] = {str(q): s for q, s in sorted(shards.items())}
            records[t] = record
    return records


def unconsumed(client: Client, topic: str, queue: int) -> int:
    """The backlog of one queue (redismq.backlog): what its slowest group has not finished,
    delayed messages included (entries of a queue no group reads count too)."""
    t = client.router.topic(topic)
    r = client.router.queue_broker(t, queue).redis
    k = client.router.queue_keys(topic, queue)
    return read_queue(r, k, client.router.groups(topic)).backlog


def expand_topic(client: Client, name: str, queues: int) -> Topic:
    """Give a topic more queues; existing queues stay where they are, new ones are placed
    by rendezvous over the brokers that take new queues."""
    if not isinstance(queues, int) or queues > 1024:
        raise InvalidMessage(f"queues must be a whole number up to 1024, not {queues!r}")
    with client.errors():
        t = client.topic(name, create=False)
        if queues <= t.queues:
            raise BrokerError(f"topic {name!r} has {t.queues} queues; expand takes a larger number")
        keys = client.router.keys
        record = topic_record(name, client.meta.hget(keys.topics, name))
        record["queues"] = queues
        # dedup records stay on the queues they were written to: a resend within the window
        # looks there too (client.earlier_queues)
        expanded = record.get("expanded", [])
        cutoff = int(_meta_time(client) * 1000) - client.dedup_window_ms
        record["expanded"] = [e for e in expanded if e[1] > cutoff] + [
            [t.queues, int(_meta_time(client) * 1000)]
        ]
        brokers = client.router.placeable()
        placement = place(brokers, route_fields(name, queues)[t.queues :], t.placement)
        shards = client.router.shards(name, placement, t.shards, start=t.queues)
        if shards:
            added = {str(q): tag for q, tag in shards.items()}
            record["shards"] = {**record.get("shards", {}), **added}
        changed = client.router.meta_scripts.expand_topic(
            keys=[keys.topics, keys.routes, keys.routes_version],
            args=[name, t.queues, json.dumps(record), *placement],
        )
        if not changed:
            raise BrokerError(f"topic {name!r} changed meanwhile; try again")
        client.router.invalidate()
        return client.router.topic(name)
