"""The route table: which broker holds each queue of a topic, cached by every client.

Placement of a stored queue never changes; a new queue goes to the live broker with the
highest rendezvous score for it, so adding a broker moves nothing.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import redis
from redis import Redis  # the name `redis` is also a Broker field
from redis.connection import Connection

from . import cluster, process
from .errors import BrokerUnavailable, TopicExists, TopicNotFound
from .health import (  # noqa: F401 - the states and intervals are public here too
    ACTIVE,
    DEFAULT_BROKER,
    DOWN,
    DOWN_FOR,
    DRAINING,
    REFRESH_INTERVAL,
    REMOVED,
    BrokerHealth,
    broker_states,
)
from .keys import MetaKeys, QueueKeys
from .route_cache import RouteCache
from .scripts import Scripts, round_trip
from .urls import connect


def queue_for_key(key: str, queues: int) -> int:
    """The queue a message key maps to: a stable hash (CRC-32), not Python's hash()."""
    return zlib.crc32(key.encode()) % queues


def rendezvous(brokers: list[str], queue_name: str) -> str:
    """The broker with the highest rendezvous score for a queue."""
    return max(brokers, key=lambda b: hashlib.blake2b(f"{b}|{queue_name}".encode()).digest())


def place(brokers: list[str], fields: list[str], existing: Iterable[str] = ()) -> list[str]:
    """Brokers for new queues (`fields`): each goes to its highest-scoring rendezvous broker
    that still has room, so that with the queues already `existing` on these brokers every
    broker ends with the same number of queues or one more (±1)."""
    counts = Counter(dict.fromkeys(brokers, 0))
    counts.update(b for b in existing if b in counts)
    base, extra = divmod(sum(counts.values()) + len(fields), len(brokers))
    out = []
    for f in fields:
        full = sum(1 for b in brokers if counts[b] > base)
        ranked = sorted(brokers, key=lambda b: hashlib.blake2b(f"{b}|{f}".encode()).digest())
        choice = next(
            (
                b
                for b in reversed(ranked)
                if counts[b] < base or (counts[b] == base and full < extra)
            ),
            ranked[-1],
        )
        counts[choice] += 1
        out.append(choice)
    return out


def earlier_queues(topic: Topic, route_key: str, queue: int, window_ms: int, now: int) -> list[int]:
    """The queues a message with this route key mapped to before the topic was expanded,
    within the dedup window (where a dedup record of its first send may be), other than
    `queue`."""
    out = []
    for count, until in topic.earlier:
        q = queue_for_key(route_key, count)
        if now < until + window_ms and q != queue and q not in out:
            out.append(q)
    return out


def batch_by_broker(topic: Topic, queues: list[int]) -> dict[str, list[int]]:
    """The positions of a batch's messages grouped by the broker of their queue, in order."""
    groups: dict[str, list[int]] = {}
    for i, queue in enumerate(queues):
        groups.setdefault(topic.placement[queue], []).append(i)
    return groups


def queue_name(topic: str, queue: int) -> str:
    """The name of one queue of a topic in the route table: ``<topic>#<q>``."""
    return f"{topic}#{queue}"


def routes_changed(pipe: Any, keys: MetaKeys) -> None:
    """Bump the route version in the MULTI of a meta change (topics, routes, brokers, groups,
    broker health): each client drops what it cached when it next reads the version. The
    meta change scripts (create_topic, expand_topic, delete_topic, registry_set, add_group)
    do the same INCR; nothing is published (docs/decisions.md)."""
    pipe.incr(keys.routes_version)


def route_fields(topic: str, queues: int) -> list[str]:
    """The route-table fields of every queue of a topic, in queue order."""
    return [queue_name(topic, q) for q in range(queues)]


def text(value: bytes | str) -> str:
    """A name or value read from Redis as text (redis-py types replies as bytes or str)."""
    return value.decode() if isinstance(value, bytes) else value


def sorted_names(raw_names: Iterable[bytes | str]) -> list[str]:
    """Names read from Redis (hash fields, set members), decoded and sorted."""
    return sorted(text(n) for n in raw_names)


def broker_list(raw_names: Iterable[bytes | str]) -> list[str]:
    """Registered broker names, sorted; a system with none registered has the meta Redis."""
    return sorted_names(raw_names) or [DEFAULT_BROKER]


def broker_url(name: str, raw: bytes | str | None) -> str | None:
    """A broker's URL from its registry record (None: the meta Redis itself).

    Raises BrokerUnavailable for an unregistered broker other than the default one (a
    cached route that names a broker removed meanwhile).
    """
    if raw is None and name != DEFAULT_BROKER:
        raise BrokerUnavailable(f"broker {name!r} is no longer registered")
    return json.loads(raw)["url"] if raw else None


def topic_record(name: str, raw: bytes | str | None) -> dict[str, Any]:
    """A topic's stored record; raises TopicNotFound when there is none."""
    if raw is None:
        raise TopicNotFound(name)
    return json.loads(raw)


def parse_topic(
    name: str,
    record: dict[str, Any],
    placed: list[bytes | str | None],
    groups: Iterable[bytes | str] = (),
) -> Topic:
    """A Topic from its stored record, the route-table entries of its queues and the
    groups known to consume it."""
    return Topic(
        name=name,
        shards={int(q): tag for q, tag in record.get("shards", {}).items()},
        earlier=tuple((int(n), int(until)) for n, until in record.get("expanded", [])),
        queues=record["queues"],
        retention=record.get("retention", 0),
        hard_cap=record.get("hard_cap", 0),
        max_backlog=record.get("max_backlog", 0),
        durability=record.get("durability"),
        groups=tuple(sorted_names(groups)),
        placement=[text(p) if p else DEFAULT_BROKER for p in placed],
    )


@dataclass(frozen=True, slots=True)
class TopicSettings:
    """What a topic keeps and bounds: see Client.create_topic."""

    retention: int = 10_000
    hard_cap: int = 0
    max_backlog: int = 0
    durability: str | None = None


def create_topic_call(
    keys: MetaKeys,
    name: str,
    queues: int,
    settings: TopicSettings,
    brokers: list[str],
    shards: Callable[[list[str]], dict[int, str]] | None = None,
) -> tuple[list[str], list[str]]:
    """KEYS and ARGV of the `create_topic` script, new queues placed by rendezvous
    (`shards` gives the hash tags of queues placed on cluster brokers)."""
    placement = place(brokers, route_fields(name, queues))
    record = json.dumps(
        {
            "queues": queues,
            "retention": settings.retention,
            "hard_cap": settings.hard_cap,
            "max_backlog": settings.max_backlog,
            "durability": settings.durability,
            "created": int(time.time() * 1000),
            **({"shards": found} if shards and (found := shards(placement)) else {}),
        }
    )
    return (
        [keys.topics, keys.routes, keys.routes_version],
        [name, record, *placement],
    )


def check_created(name: str, stored: bytes, queues: int) -> None:
    """Raise TopicExists when the stored topic has another number of queues."""
    existing = json.loads(stored)["queues"]
    if existing != queues:
        raise TopicExists(
            f"topic {name!r} exists with {existing} queues, not {queues} "
            f"(add queues with: redismq topic expand {name} --queues {queues})"
        )


@dataclass(slots=True, eq=False)
class Broker:
    """One broker: its name, its URL (None: the meta Redis itself) and a connection.

    On a Redis Cluster broker, the queues of one hash tag (`shard`: one slot, hence one
    master) get a Broker of their own sharing the cluster's connection, so that everything
    grouped by broker — a blocking read, a pipeline of scripts — names keys of one slot.
    """

    name: str
    url: str | None
    redis: redis.Redis
    scripts: Scripts
    shard: str | None = None
    _held: threading.local = field(default_factory=threading.local, repr=False)

    @property
    def cluster(self) -> bool:
        """Whether this broker is a Redis Cluster."""
        return cluster.is_cluster(self.redis)

    def sender(self) -> Redis:
        """The calling thread's own connection to this broker, for sends one at a time.

        It is taken from the pool at the thread's first send and given back when the
        thread ends (or closed with the client), so that a send does not take a connection
        and give it back each time: the pool checks every connection it lends for unread
        data, a system call. On a Redis Cluster, the cluster client itself.
        """
        owner, held = getattr(self._held, "client", (0, self.redis))
        if owner != process.pid():  # none yet, or the parent's (a forked child must not share it)
            held = self.redis if self.cluster else self.redis.client()
            self._held.client = (process.pid(), held)
        return held

    def send_call(self, keys: list[str], args: list[Any]) -> Any:
        """A call of the `send` script on the calling thread's own connection (`sender`)."""
        if self.cluster:
            return self.scripts.send(keys=keys, args=args)
        return self.scripts.send.on_connection(self.sender(), keys, args)

    def run_scripts(
        self, calls: list[tuple[str, list[str], list[Any]]], raise_on_error: bool = True
    ) -> list[Any]:
        """`Scripts.run` on the calling thread's own connection (`sender`): for a thread
        that calls this broker again and again (a fetch thread)."""
        on = None if self.cluster else self.sender()
        return self.scripts.run(calls, raise_on_error, on=on)

    def round_trip(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        """Commands in one round trip on the calling thread's own connection (`sender`),
        each reply in its command's place (an error reply as its exception); not on a Redis
        Cluster (its commands may go to several nodes)."""
        return round_trip(cast(Connection, self.sender().connection), commands)

    def pipeline(self) -> Any:
        """A non-transactional pipeline for this broker's keys. On a Redis Cluster Broker of
        one hash tag, a pipeline on the master of that slot, so that keyless commands (TIME,
        INFO) may go with the keys; else the client's own pipeline."""
        if self.shard is not None and self.cluster:
            return cluster.NodePipeline(self.redis, f"{{{self.shard}}}")  # type: ignore[arg-type]
        return self.redis.pipeline(transaction=False)

    def on_node(self, key: str, fill: Callable[[Any], None]) -> list[Any]:
        """Run a pipeline built by `fill` (commands on `key`'s slot) on one connection to
        the master that holds `key`, so that a WAIT at its end covers the writes before it."""
        if self.cluster:
            return cluster.on_node(self.redis, key, fill)  # type: ignore[arg-type]
        pipe = self.redis.pipeline(transaction=False)
        fill(pipe)
        return pipe.execute()

    def script_on_node(
        self, name: str, key: str, calls: list[tuple[list[str], list[Any]]], wait_ms: int = -1
    ) -> list[Any]:
        """Calls of one script, then a WAIT for a replica when `wait_ms` >= 0 (its reply
        last), in one pipeline on the master of `key`'s slot (see `on_node`); the script is
        loaded again where the server lacked it (then none of its calls ran)."""
        script = getattr(self.scripts, name)

        def fill(pipe: Any) -> None:
            for keys, args in calls:
                pipe.evalsha(script.sha, len(keys), *keys, *args)
            if wait_ms >= 0:
                pipe.wait(1, wait_ms)

        try:
            return self.on_node(key, fill)
        except redis.exceptions.NoScriptError:
            self.redis.script_load(script.script)
            return self.on_node(key, fill)


@dataclass(slots=True)
class Topic:
    """A topic's stored record and its queue placement."""

    name: str
    queues: int
    retention: int
    hard_cap: int
    max_backlog: int = 0
    durability: str | None = None
    groups: tuple[str, ...] = ()
    placement: list[str] = field(default_factory=list)
    # queue -> stored hash tag, for queues on Redis Cluster brokers
    shards: dict[int, str] = field(default_factory=dict)
    # (number of queues, until when in ms) before each `topic expand`: a dedup key sent
    # then was recorded on the queue it mapped to in that layout
    earlier: tuple[tuple[int, int], ...] = ()
    _rr: itertools.count = field(default_factory=itertools.count)

    def next_queue(self, usable: Callable[[str], bool] | None = None) -> int:
        """The next queue round-robin, skipping queues whose broker is not `usable`
        (when every broker is unusable, the next queue anyway: the send then fails clearly)."""
        for _ in range(self.queues):
            q = next(self._rr) % self.queues
            if usable is None or usable(self.placement[q]):
                return q
        return next(self._rr) % self.queues

    def next_queues(self, n: int, usable: Callable[[str], bool] | None = None) -> list[int]:
        """The next `n` queues round-robin, as `next_queue` gives them one by one (each
        broker asked once whether it is `usable`)."""
        if usable is not None:
            up = {b: usable(b) for b in set(self.placement)}
            if not all(up.values()):
                return [self.next_queue(up.__getitem__) for _ in range(n)]
        queues = self.queues
        return [i % queues for i in itertools.islice(self._rr, n)]


class Router:
    """Reads topics, routes and brokers from the meta Redis and caches them."""

    def __init__(self, meta: redis.Redis, namespace: str) -> None:
        self.meta = meta
        self.keys = MetaKeys(namespace, tagged=cluster.is_cluster(meta))
        self.namespace = namespace
        self._lock = threading.Lock()
        self._brokers: dict[str, Broker] = {}
        self._cache = RouteCache()
        self.meta_scripts = Scripts(meta)
        self.health = BrokerHealth()
        self._queue_keys: dict[tuple[str, int, str | None], QueueKeys] = {}
        self._views: dict[tuple[str, str], Broker] = {}

    # -- brokers ---------------------------------------------------------------------
    def broker(self, name: str) -> Broker:
        """The connected broker of that name."""
        with self._lock:
            found = self._brokers.get(name)
        if found is not None:
            return found
        try:
            url = broker_url(name, self.meta.hget(self.keys.brokers, name))
        except BrokerUnavailable:
            self.invalidate()  # a cached route names a broker removed meanwhile
            raise
        conn = self.meta if url is None else connect(url)
        broker = Broker(name, url, conn, self.meta_scripts if url is None else Scripts(conn))
        with self._lock:
            return self._brokers.setdefault(name, broker)

    def close(self) -> None:
        """Close the connections to brokers other than the meta Redis (each pool's, with
        the ones threads hold for their sends)."""
        with self._lock:
            brokers, self._brokers = list(self._brokers.values()), {}
            self._views.clear()
        for broker in brokers:
            if broker.redis is not self.meta:
                broker.redis.close()

    def _forget_changed(self, records: dict[bytes, bytes]) -> None:
        """Drop the connections of brokers removed, or registered again with another URL,
        since they were opened: nothing is sent through a stale connection."""
        with self._lock:
            for name, broker in list(self._brokers.items()):
                raw = records.get(name.encode())
                if broker.url is not None and (raw is None or json.loads(raw)["url"] != broker.url):
                    del self._brokers[name]
                    for key in [k for k in self._views if k[0] == name]:
                        del self._views[key]

    def broker_names(self) -> list[str]:
        """Registered brokers; a system with none registered has the meta Redis itself."""
        return broker_list(self.meta.hkeys(self.keys.brokers))

    def placeable(self) -> list[str]:
        """Brokers new queues may go to: active (not draining) and not known to be down."""
        self.states()
        return self.health.placeable(self.broker_names())

    def states(self) -> dict[str, str]:
        """Broker name -> active, draining or down (from the registry and the NameServer)."""
        pipe = self.meta.pipeline(transaction=False)
        pipe.hgetall(self.keys.brokers)
        pipe.hgetall(self.keys.broker_health)
        pipe.get(self.keys.routes_version)
        records, health, version = pipe.execute()
        self._cache.seen(version)  # states and routes of the same moment
        self._forget_changed(records)
        return self.health.update(records, health)

    def _refresh_states(self) -> None:
        """Read the states again if they are old; keep the last ones if the meta Redis
        cannot be reached (a send then rides on what it knew)."""
        if self.health.due():
            try:
                self.states()
            except (redis.ConnectionError, redis.TimeoutError):
                self.health.unreadable()

    def usable(self, name: str) -> bool:
        """Whether a send may go to this broker now (writable, not known to be down)."""
        self._refresh_states()
        return self.health.usable(name)

    def state(self, name: str) -> str:
        """active, draining, down, or removed (no longer registered), as last read."""
        self._refresh_states()
        return self.health.state(name)

    def mark_down(self, name: str) -> None:
        """Avoid a broker for a moment after a failed send."""
        self.health.mark_down(name)
        self.invalidate()

    # -- topics ----------------------------------------------------------------------
    def cached(self, name: str) -> Topic | None:
        """The topic if it is cached and the route version was checked recently, else None."""
        return self._cache.get(name) if self._cache.fresh() else None

    def known(self, name: str) -> Topic | None:
        """The last copy read of a topic, however old (None: never read)."""
        return self._cache.get(name)

    def topic(self, name: str) -> Topic:
        """The topic's record; raises TopicNotFound."""
        self._maybe_refresh()
        found = self._cache.get(name)
        return found if found is not None else self._load_topic(name)

    def _load_topic(self, name: str) -> Topic:
        # the version first: a change between the reads leaves the topic tagged with the
        # version before it, which the next version check drops
        pipe = self.meta.pipeline(transaction=False)
        pipe.get(self.keys.routes_version)
        pipe.hget(self.keys.topics, name)
        pipe.smembers(self.keys.groups(name))
        version, raw, groups = pipe.execute()
        record = topic_record(name, raw)
        fields = route_fields(name, record["queues"])
        placed = self.meta.hmget(self.keys.routes, fields) if fields else []
        topic = parse_topic(name, record, placed, groups)
        self._cache.put(topic, version)
        return topic

    def create_topic(self, name: str, queues: int, settings: TopicSettings) -> Topic:
        """Create a topic and place its queues; idempotent for the same shape."""
        keys, args = create_topic_call(
            self.keys,
            name,
            queues,
            settings,
            self.placeable(),
            lambda placement: self.shards(name, placement, {}),
        )
        stored = self.meta_scripts.create_topic(keys=keys, args=args)
        check_created(name, stored, queues)
        self._cache.drop(name)
        return self.topic(name)

    def topic_names(self) -> list[str]:
        return sorted_names(self.meta.hkeys(self.keys.topics))

    def shards(
        self, name: str, placement: list[str], existing: dict[int, str], start: int = 0
    ) -> dict[int, str]:
        """Hash tags for queues `start`.. of a topic placed on Redis Cluster brokers, spread
        over each cluster's masters (`existing`: the tags its queues have already)."""
        out: dict[int, str] = {}
        for name_ in sorted(set(placement)):
            broker = self.broker(name_)
            if not broker.cluster:
                continue
            new = [start + i for i, b in enumerate(placement) if b == name_]
            mine = {q: t for q, t in existing.items() if q < start}
            ranges = cluster.master_ranges(broker.redis.cluster_slots())  # type: ignore[attr-defined]
            out.update(cluster.choose_shards(ranges, name, new, mine))
        return out

    def queue_keys(self, topic: str, queue: int) -> QueueKeys:
        """The key names of one queue (with its stored hash tag on a cluster broker)."""
        t = self._cache.get(topic)
        if t is None:
            try:
                t = self.topic(topic)
            except TopicNotFound:
                t = None
        shard = t.shards.get(queue) if t is not None else None
        found = self._queue_keys.get((topic, queue, shard))
        if found is None:
            found = QueueKeys(self.namespace, topic, queue, shard)
            self._queue_keys[(topic, queue, shard)] = found
        return found

    def queue_broker(self, topic: Topic, queue: int) -> Broker:
        """The broker of one queue; on a cluster, the Broker of the queue's hash tag."""
        broker = self.broker(topic.placement[queue])
        shard = topic.shards.get(queue)
        if shard is None or not broker.cluster:
            return broker
        with self._lock:
            view = self._views.get((broker.name, shard))
            if view is None or view.redis is not broker.redis:
                view = Broker(broker.name, broker.url, broker.redis, broker.scripts, shard)
                self._views[(broker.name, shard)] = view
            return view

    # -- groups ----------------------------------------------------------------------
    def add_group(self, topic: str, group: str) -> None:
        """Remember that a group consumes a topic (for status, trimming and bounds); a new
        group bumps the route version so that producers learn of it."""
        keys = [self.keys.groups(topic), self.keys.routes_version]
        if self.meta_scripts.add_group(keys=keys, args=[group]):
            self._cache.drop(topic)

    def groups(self, topic: str) -> list[str]:
        return sorted_names(self.meta.smembers(self.keys.groups(topic)))

    # -- cache -----------------------------------------------------------------------
    def invalidate(self) -> None:
        """Forget cached topics (after a broker error or a route change)."""
        self._cache.clear()

    def _maybe_refresh(self) -> None:
        if self._cache.check_due():
            self._cache.seen(self.meta.get(self.keys.routes_version))
