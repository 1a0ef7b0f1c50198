"""The asyncio producer: create topics and send messages from async code (web apps).

`AsyncClient` has the sending side of the sync `Client` with the same semantics and errors;
it reads topics and routes with async calls only, so the event loop never blocks on Redis.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Any

from redis.asyncio import Redis as AsyncRedis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster

from .client import (
    DEFAULT_QUEUES,
    DEFAULT_RETENTION,
    Outgoing,
    Sent,
    batch_by_broker,
    batch_sent,
    check_topic_name,
    check_topic_shape,
    choose_queue,
    client_settings,
    full_message,
    index_entry,
    prepare_batch,
    prepare_message,
    queue_bound,
    redis_errors,
    script_sent,
    send_script_call,
)
from .cluster import choose_shards, master_ranges
from .errors import TopicFull, TopicNotFound
from .keys import MetaKeys, QueueKeys
from .message import DEFAULT_MAX_BODY
from .routing import (
    RouteCache,
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
from .scripts import source
from .urls import connect_async, mask_url

if TYPE_CHECKING:
    from redis.commands.core import AsyncScript

    from .client import Client
    from .job import AsyncJob


@dataclass(slots=True, eq=False)
class AsyncBroker:
    """One broker for the async client: name, URL (None: the meta Redis), connection, script."""

    name: str
    url: str | None
    redis: AsyncRedis
    send: AsyncScript


class AsyncRouter:
    """Reads topics, routes and brokers from the meta Redis with async calls, and caches them.

    Cached topics are dropped when the route version changes; the version is re-read at
    most once per second, as in the sync `Router`.
    """

    def __init__(self, meta: AsyncRedis, namespace: str) -> None:
        self.meta = meta
        self.keys = MetaKeys(namespace, tagged=isinstance(meta, AsyncRedisCluster))
        self.namespace = namespace
        self._cache = RouteCache()
        self._brokers: dict[str, AsyncBroker] = {}
        self._shards: dict[str, dict[int, str]] = {}
        self._create_topic = meta.register_script(source("create_topic"))
        self._meta_send = meta.register_script(source("send"))

    # -- brokers ---------------------------------------------------------------------
    async def broker(self, name: str) -> AsyncBroker:
        """The connected broker of that name."""
        found = self._brokers.get(name)
        if found is not None:
            return found
        url = broker_url(name, await self.meta.hget(self.keys.brokers, name))
        found = self._brokers.get(name)  # another task may have added it meanwhile
        if found is not None:
            return found
        if url is None:
            broker = AsyncBroker(name, None, self.meta, self._meta_send)
        else:
            conn = connect_async(url)
            broker = AsyncBroker(name, url, conn, conn.register_script(source("send")))
        self._brokers[name] = broker
        return broker

    async def broker_names(self) -> list[str]:
        """Registered brokers; a system with none registered has the meta Redis itself."""
        return broker_list(await self.meta.hkeys(self.keys.brokers))

    async def aclose(self) -> None:
        """Close the connections to brokers other than the meta Redis."""
        brokers, self._brokers = list(self._brokers.values()), {}
        for broker in brokers:
            if broker.redis is not self.meta:
                await broker.redis.aclose()

    # -- topics ----------------------------------------------------------------------
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
        brokers = await self.broker_names()
        placement = place(brokers, route_fields(name, queues))
        shards: dict[int, str] = {}
        for b in sorted(set(placement)):
            conn = (await self.broker(b)).redis
            if isinstance(conn, AsyncRedisCluster):
                ranges = master_ranges(await conn.cluster_slots())
                new = [q for q, p in enumerate(placement) if p == b]
                shards.update(choose_shards(ranges, name, new, {}))
        keys, args = create_topic_call(self.keys, name, queues, settings, brokers, lambda _: shards)
        stored = await self._create_topic(keys=keys, args=args)
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


class AsyncClient:
    """Sends messages from asyncio code through a redismq system's meta Redis.

    Takes the sending options of `Client` and behaves like its `send`, `send_message`,
    `send_many` and `create_topic`, with the same errors. Use it inside one event loop and
    `await client.aclose()` (or `async with AsyncClient(...)`) when done.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        namespace: str | None = None,
        auto_create_topics: bool = True,
        default_queues: int = DEFAULT_QUEUES,
        max_body: int = DEFAULT_MAX_BODY,
        dedup_window: float = 86_400.0,
        result_ttl: float = 86_400.0,
    ) -> None:
        self.url, self.namespace = client_settings(url, namespace)
        self.result_ttl_ms = int(result_ttl * 1000)
        self.auto_create_topics = auto_create_topics
        self.default_queues = default_queues
        self.max_body = max_body
        self.dedup_window_ms = int(dedup_window * 1000)
        self.meta = connect_async(self.url)
        self.router = AsyncRouter(self.meta, self.namespace)

    @classmethod
    def like(cls, client: Client) -> AsyncClient:
        """An async client with the URL, namespace and sending options of a sync client."""
        return cls(
            client.url,
            namespace=client.namespace,
            auto_create_topics=client.auto_create_topics,
            default_queues=client.default_queues,
            max_body=client.max_body,
            dedup_window=client.dedup_window_ms / 1000,
            result_ttl=client.result_ttl_ms / 1000,
        )

    def __repr__(self) -> str:
        return f"AsyncClient({mask_url(self.url)!r}, namespace={self.namespace!r})"

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def errors(self) -> Any:
        """Context in which redis-py errors become one-line RedisMQErrors."""
        return redis_errors(self.url)

    async def ping(self) -> None:
        """Check that the meta Redis answers; raises BrokerUnavailable."""
        with self.errors():
            await self.meta.ping()

    async def aclose(self) -> None:
        """Close every connection of this client."""
        await self.router.aclose()
        await self.meta.aclose()

    # -- topics ----------------------------------------------------------------------
    async def create_topic(
        self,
        name: str,
        queues: int = DEFAULT_QUEUES,
        *,
        retention: int = DEFAULT_RETENTION,
        hard_cap: int = 0,
        max_backlog: int = 0,
    ) -> Topic:
        """Create a topic of `queues` queues (idempotent); see `Client.create_topic`."""
        check_topic_shape(name, queues)
        with self.errors():
            return await self.router.create_topic(
                name, queues, TopicSettings(retention, hard_cap, max_backlog)
            )

    async def topic(self, name: str, *, create: bool | None = None) -> Topic:
        """A topic's record; creates it when missing if auto-creation is on."""
        check_topic_name(name)
        create = self.auto_create_topics if create is None else create
        with self.errors():
            try:
                return await self.router.topic(name)
            except TopicNotFound:
                if not create:
                    raise
        return await self.create_topic(name, self.default_queues)

    async def topics(self) -> list[str]:
        """The names of every topic, sorted."""
        with self.errors():
            return await self.router.topic_names()

    # -- sending ---------------------------------------------------------------------
    async def send(
        self,
        topic: str,
        body: Any,
        *,
        key: str | None = None,
        delay: float | timedelta | None = None,
        dedup_key: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> str:
        """Send one message; returns its id once the broker has stored it."""
        sent = await self.send_message(
            topic, body, key=key, delay=delay, dedup_key=dedup_key, headers=headers
        )
        return sent.id

    async def send_message(
        self,
        topic: str,
        body: Any,
        *,
        key: str | None = None,
        delay: float | timedelta | None = None,
        dedup_key: str | None = None,
        headers: dict[str, str] | None = None,
        index_as: tuple[str, str] | None = None,
    ) -> Sent:
        """Send one message; returns where it went (id, queue and stream entry).

        A message with a `key` goes to the same queue as the sync client sends it to; a
        resend with the same `dedup_key` within the window returns the first id.
        `index_as=(group, task)` (tasks do it) lets `job(id)` find it.
        """
        msg = prepare_message(
            body,
            key=key,
            delay=delay,
            dedup_key=dedup_key,
            headers=headers,
            max_body=self.max_body,
            index_as=index_as,
        )
        return await self._send_prepared(await self.topic(topic), msg)

    async def job(self, message_id: str) -> AsyncJob:
        """A task's job by its message id alone, with awaitable status, result, progress
        and cancel; raises JobNotFound."""
        from .job import find_async_job

        return await find_async_job(self, message_id)

    async def _send_prepared(self, t: Topic, msg: Outgoing) -> Sent:
        """Write one checked message to the queue it maps to."""
        topic = t.name
        queue = choose_queue(t, msg)
        qk = self.router.queue_keys(topic, queue)
        bound = queue_bound(t)
        index = index_entry(self.namespace, topic, queue, msg)
        with self.errors():
            broker = await self.router.queue_broker(t, queue)
            if not msg.needs_script and not bound:
                async with broker.redis.pipeline(transaction=False) as pipe:
                    pipe.xadd(qk.stream, msg.fields)
                    if index:
                        pipe.set(*index, px=self.result_ttl_ms)
                    entry = (await pipe.execute())[0]
                return Sent(msg.id, topic, queue, entry.decode())
            keys, args = send_script_call(qk, msg, self.dedup_window_ms, bound, t.groups)
            sent = script_sent(await broker.send(keys=keys, args=args), topic, queue)
            if sent is not None and index and sent.id == msg.id:
                await broker.redis.set(*index, px=self.result_ttl_ms)
        if sent is None:
            raise TopicFull(full_message(t))
        return sent

    async def send_many(
        self, topic: str, bodies: Iterable[Any], *, headers: dict[str, str] | None = None
    ) -> list[str]:
        """Send many messages round-robin over the topic's queues in one pipeline per broker.

        Returns their ids in the order of `bodies`.
        """
        return [s.id for s in await self.send_many_messages(topic, bodies, headers=headers)]

    async def send_many_messages(
        self, topic: str, bodies: Iterable[Any], *, headers: dict[str, str] | None = None
    ) -> list[Sent]:
        """Send many messages round-robin in one pipeline per broker; returns where they went."""
        msgs = prepare_batch(bodies, headers, self.max_body)
        t = await self.topic(topic)
        if t.max_backlog:  # every message must pass the bound: one checked send each
            return [await self._send_prepared(t, m) for m in msgs]
        queues = [t.next_queue() for _ in msgs]
        entries: list[str | None] = [None] * len(msgs)

        async def to_broker(name: str, indexes: list[int]) -> None:
            broker = await self.router.broker(name)
            async with broker.redis.pipeline(transaction=False) as pipe:
                for i in indexes:
                    pipe.xadd(self.router.queue_keys(topic, queues[i]).stream, msgs[i].fields)
                replies = await pipe.execute()
            for i, entry in zip(indexes, replies, strict=True):
                entries[i] = entry.decode()

        with self.errors():
            groups = batch_by_broker(t, queues)
            await asyncio.gather(*(to_broker(name, idx) for name, idx in groups.items()))
        return batch_sent(topic, msgs, queues, entries)


__all__ = ["AsyncClient", "AsyncRouter", "AsyncBroker"]
