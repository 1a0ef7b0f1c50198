"""The asyncio router: topics, routes and brokers read from the meta Redis with async calls
and cached, by the rules of the sync `Router` (`BrokerHealth`, `RouteCache`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis
from redis.asyncio import Redis as AsyncRedis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster

from .cluster import choose_shards, master_ranges
from .errors import BrokerUnavailable
from .keys import MetaKeys, QueueKeys
from .route_cache import RouteCache
from .routing import (
    BrokerHealth,
    Topic,
    TopicSettings,
    broker_list,
    broker_url,
    check_created,
    create_topic_call,
    parse_topic,
    place,
    route_fields,
    sorted_names,
    topic_record,
)
from .scripts import Scripts
from .urls import connect_async


@dataclass(slots=True, eq=False)
class AsyncBroker:
    """One broker for the async client: name, URL (None: the meta Redis), connection, and
    the scripts registered on it."""

    name: str
    url: str | None
    redis: AsyncRedis
    scripts: Scripts

    @property
    def cluster(self) -> bool:
        return isinstance(self.redis, AsyncRedisCluster)

    async def script_on_node(
        self, name: str, calls: list[tuple[list[str], list[Any]]], wait_ms: int = -1
    ) -> list[Any]:
        """Calls of one script, then a WAIT for a replica when `wait_ms` >= 0 (its reply
        last), in one pipeline on one connection (not on a Redis Cluster); the script is
        loaded again where the server lacked it (then none of its calls ran)."""
        script = getattr(self.scripts, name)
        for attempt in range(2):
            async with self.redis.pipeline(transaction=False) as pipe:
                for keys, args in calls:
                    pipe.evalsha(script.sha, len(keys), *keys, *args)
                if wait_ms >= 0:
                    pipe.wait(1, wait_ms)
                try:
                    return await pipe.execute()
                except redis.exceptions.NoScriptError:
                    if attempt:
                        raise
                    await self.redis.script_load(script.script)
        raise AssertionError("unreachable")


class AsyncRouter:
    """Reads topics, routes and brokers from the meta Redis with async calls, and caches them.

    The rules (which brokers are usable and placeable, a removed broker) are the sync
    `Router`'s, from `BrokerHealth`; cached topics are dropped when the route version
    changes, re-read at most once per second.
    """

    def __init__(self, meta: AsyncRedis, namespace: str) -> None:
        self.meta = meta
        self.keys = MetaKeys(namespace, tagged=isinstance(meta, AsyncRedisCluster))
        self.namespace = namespace
        self._cache = RouteCache()
        self._brokers: dict[str, AsyncBroker] = {}
        self._shards: dict[str, dict[int, str]] = {}
        self.meta_scripts = Scripts(meta)
        self.health = BrokerHealth()

    # -- brokers ---------------------------------------------------------------------
    async def broker(self, name: str) -> AsyncBroker:
        """The connected broker of that name; BrokerUnavailable if it is no longer registered."""
        found = self._brokers.get(name)
        if found is not None:
            return found
        try:
            url = broker_url(name, await self.meta.hget(self.keys.brokers, name))
        except BrokerUnavailable:
            self.invalidate()  # a cached route names a broker removed meanwhile
            raise
        found = self._brokers.get(name)  # another task may have added it meanwhile
        if found is not None:
            return found
        if url is None:
            broker = AsyncBroker(name, None, self.meta, self.meta_scripts)
        else:
            conn = connect_async(url)
            broker = AsyncBroker(name, url, conn, Scripts(conn))
        self._brokers[name] = broker
        return broker

    async def broker_names(self) -> list[str]:
        """Registered brokers; a system with none registered has the meta Redis itself."""
        return broker_list(await self.meta.hkeys(self.keys.brokers))

    async def states(self) -> dict[str, str]:
        """Broker name -> active, draining or down (from the registry and the NameServer)."""
        async with self.meta.pipeline(transaction=False) as pipe:
            pipe.hgetall(self.keys.brokers)
            pipe.hgetall(self.keys.broker_health)
            pipe.get(self.keys.routes_version)
            records, health, version = await pipe.execute()
        self._cache.seen(version)
        return self.health.update(records, health)

    async def refresh_states(self) -> None:
        """Read the states again if they are old; keep the last ones if the meta Redis
        cannot be reached."""
        if self.health.due():
            try:
                await self.states()
            except (redis.ConnectionError, redis.TimeoutError):
                self.health.unreadable()

    async def placeable(self) -> list[str]:
        """Brokers new queues may go to: active (not draining) and not known to be down."""
        await self.states()
        return self.health.placeable(await self.broker_names())

    def usable(self, name: str) -> bool:
        """Whether a send may go to this broker (as of the last `refresh_states`)."""
        return self.health.usable(name)

    def state(self, name: str) -> str:
        """active, draining, down or removed (as of the last `refresh_states`)."""
        return self.health.state(name)

    def mark_down(self, name: str) -> None:
        """Avoid a broker for a moment after a failed send."""
        self.health.mark_down(name)
        self.invalidate()

    async def aclose(self) -> None:
        """Close the connections to brokers other than the meta Redis."""
        brokers, self._brokers = list(self._brokers.values()), {}
        for broker in brokers:
            if broker.redis is not self.meta:
                await broker.redis.aclose()

    # -- topics ----------------------------------------------------------------------
    def known(self, name: str) -> Topic | None:
        """The last copy read of a topic, however old (None: never read)."""
        return self._cache.get(name)

    async def topic(self, name: str) -> Topic:
        """The topic's record; raises TopicNotFound."""
        await self._maybe_refresh()
        found = self._cache.get(name)
        return found if found is not None else await self._load_topic(name)

    async def _load_topic(self, name: str) -> Topic:
        async with self.meta.pipeline(transaction=False) as pipe:
            pipe.get(self.keys.routes_version)  # first: see Router._load_topic
            pipe.hget(self.keys.topics, name)
            pipe.smembers(self.keys.groups(name))
            version, raw, groups = await pipe.execute()
        record = topic_record(name, raw)
        fields = route_fields(name, record["queues"])
        placed = await self.meta.hmget(self.keys.routes, fields) if fields else []
        topic = parse_topic(name, record, placed, groups)
        self._shards[name] = topic.shards  # a queue's tag never changes: kept past the cache
        self._cache.put(topic, version)
        return topic

    async def create_topic(self, name: str, queues: int, settings: TopicSettings) -> Topic:
        """Create a topic and place its queues; idempotent for the same shape."""
        brokers = await self.placeable()
        placement = place(brokers, route_fields(name, queues))
        shards: dict[int, str] = {}
        for b in sorted(set(placement)):
            conn = (await self.broker(b)).redis
            if isinstance(conn, AsyncRedisCluster):
                ranges = master_ranges(await conn.cluster_slots())
                new = [q for q, p in enumerate(placement) if p == b]
                shards.update(choose_shards(ranges, name, new, {}))
        keys, args = create_topic_call(self.keys, name, queues, settings, brokers, lambda _: shards)
        stored = await self.meta_scripts.create_topic(keys=keys, args=args)
        check_created(name, stored, queues)
        self._cache.drop(name)
        return await self.topic(name)

    async def topic_names(self) -> list[str]:
        """The names of every topic, sorted."""
        return sorted_names(await self.meta.hkeys(self.keys.topics))

    def queue_keys(self, topic: str, queue: int) -> QueueKeys:
        """Key names of one queue of a topic (of a topic read just before: on a Redis
        Cluster broker its keys carry the queue's stored hash tag)."""
        return QueueKeys(self.namespace, topic, queue, self._shards.get(topic, {}).get(queue))

    async def queue_broker(self, topic: Topic, queue: int) -> AsyncBroker:
        """The broker that holds one queue of a topic."""
        return await self.broker(topic.placement[queue])

    # -- cache -----------------------------------------------------------------------
    def invalidate(self) -> None:
        """Forget cached topics (after a broker error or a route change)."""
        self._cache.clear()

    async def _maybe_refresh(self) -> None:
        if self._cache.check_due():
            self._cache.seen(await self.meta.get(self.keys.routes_version))


__all__ = ["AsyncBroker", "AsyncRouter"]
