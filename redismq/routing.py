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
from dataclasses import dataclass, field

import redis

from .errors import TopicExists, TopicNotFound
from .keys import MetaKeys, QueueKeys
from .scripts import Scripts
from .urls import connect

DEFAULT_BROKER = "default"
REFRESH_INTERVAL = 1.0


def queue_for_key(key: str, queues: int) -> int:
    """The queue a message key maps to: a stable hash (CRC-32), not Python's hash()."""
    return zlib.crc32(key.encode()) % queues


def rendezvous(brokers: list[str], queue_name: str) -> str:
    """The broker with the highest rendezvous score for a queue."""
    return max(brokers, key=lambda b: hashlib.blake2b(f"{b}|{queue_name}".encode()).digest())


@dataclass(slots=True, eq=False)
class Broker:
    """One broker: its name, its URL (None: the meta Redis itself) and a connection."""

    name: str
    url: str | None
    redis: redis.Redis
    scripts: Scripts


@dataclass(slots=True)
class Topic:
    """A topic's stored record and its queue placement."""

    name: str
    queues: int
    retention: int
    hard_cap: int
    placement: list[str] = field(default_factory=list)
    _rr: itertools.count = field(default_factory=itertools.count)

    def next_queue(self) -> int:
        return next(self._rr) % self.queues


class Router:
    """Reads topics, routes and brokers from the meta Redis and caches them."""

    def __init__(self, meta: redis.Redis, namespace: str) -> None:
        self.meta = meta
        self.keys = MetaKeys(namespace)
        self.namespace = namespace
        self._lock = threading.Lock()
        self._brokers: dict[str, Broker] = {}
        self._topics: dict[str, Topic] = {}
        self._version: bytes | None = None
        self._checked = 0.0
        self.meta_scripts = Scripts(meta)

    # -- brokers ---------------------------------------------------------------------
    def broker(self, name: str) -> Broker:
        """The connected broker of that name."""
        with self._lock:
            found = self._brokers.get(name)
        if found is not None:
            return found
        raw = self.meta.hget(self.keys.brokers, name)
        url = json.loads(raw)["url"] if raw else None
        if raw is None and name != DEFAULT_BROKER:
            raise LookupError(f"broker {name!r} is not registered")
        conn = self.meta if url is None else connect(url)
        broker = Broker(name, url, conn, self.meta_scripts if url is None else Scripts(conn))
        with self._lock:
            return self._brokers.setdefault(name, broker)

    def broker_names(self) -> list[str]:
        """Registered brokers; a system with none registered has the meta Redis itself."""
        names = sorted(n.decode() for n in self.meta.hkeys(self.keys.brokers))
        return names or [DEFAULT_BROKER]

    # -- topics ----------------------------------------------------------------------
    def topic(self, name: str) -> Topic:
        """The topic's record; raises TopicNotFound."""
        self._maybe_refresh()
        with self._lock:
            found = self._topics.get(name)
        return found if found is not None else self._load_topic(name)

    def _load_topic(self, name: str) -> Topic:
        pipe = self.meta.pipeline(transaction=False)
        pipe.hget(self.keys.topics, name)
        pipe.get(self.keys.routes_version)
        raw, version = pipe.execute()
        if raw is None:
            raise TopicNotFound(name)
        record = json.loads(raw)
        queues = record["queues"]
        fields = [f"{name}#{q}" for q in range(queues)]
        placed = self.meta.hmget(self.keys.routes, fields) if fields else []
        topic = Topic(
            name=name,
            queues=queues,
            retention=record.get("retention", 0),
            hard_cap=record.get("hard_cap", 0),
            placement=[(p or DEFAULT_BROKER.encode()).decode() for p in placed],
        )
        with self._lock:
            self._topics[name] = topic
            self._version = version
        return topic

    def create_topic(self, name: str, queues: int, retention: int, hard_cap: int) -> Topic:
        """Create a topic and place its queues; idempotent for the same shape."""
        brokers = self.broker_names()
        record = json.dumps(
            {
                "queues": queues,
                "retention": retention,
                "hard_cap": hard_cap,
                "created": int(time.time() * 1000),
            }
        )
        placement = [rendezvous(brokers, f"{name}#{q}") for q in range(queues)]
        stored = self.meta_scripts.create_topic(
            keys=[self.keys.topics, self.keys.routes, self.keys.routes_version],
            args=[self.keys.routes_channel, name, record, *placement],
        )
        existing = json.loads(stored)["queues"]
        if existing != queues:
            raise TopicExists(
                f"topic {name!r} exists with {existing} queues, not {queues} "
                f"(add queues with: redismq topic expand {name} --queues {queues})"
            )
        with self._lock:
            self._topics.pop(name, None)
        return self.topic(name)

    def topic_names(self) -> list[str]:
        return sorted(n.decode() for n in self.meta.hkeys(self.keys.topics))

    def queue_keys(self, topic: str, queue: int) -> QueueKeys:
        return QueueKeys(self.namespace, topic, queue)

    def queue_broker(self, topic: Topic, queue: int) -> Broker:
        return self.broker(topic.placement[queue])

    # -- groups ----------------------------------------------------------------------
    def add_group(self, topic: str, group: str) -> None:
        """Remember that a group consumes a topic (for status and trimming)."""
        self.meta.sadd(self.keys.groups(topic), group)

    def groups(self, topic: str) -> list[str]:
        return sorted(g.decode() for g in self.meta.smembers(self.keys.groups(topic)))

    # -- cache -----------------------------------------------------------------------
    def invalidate(self) -> None:
        """Forget cached topics (after a broker error or a route change)."""
        with self._lock:
            self._topics.clear()

    def _maybe_refresh(self) -> None:
        now = time.monotonic()
        if now - self._checked < REFRESH_INTERVAL:
            return
        self._checked = now
        version = self.meta.get(self.keys.routes_version)
        if version != self._version:
            self.invalidate()
