"""The asyncio producer: create topics and send messages from async code (web apps).

`AsyncClient` has the sending side of the sync `Client` with the same semantics and errors;
it reads topics and routes with async calls only, so the event loop never blocks on Redis.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from datetime import timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Any, cast

import redis
from redis.asyncio import Redis as AsyncRedis

from .aio_routing import AsyncBroker, AsyncRouter
from .batching import BatchSend, Part, prepare_batch, stopped_at
from .client import (
    DEFAULT_QUEUES,
    DEFAULT_RETENTION,
    DEFAULT_SEND_TIMEOUT,
    client_settings,
    converted,
    redis_errors,
)
from .errors import BrokerUnavailable, NotReplicated, RedisMQError, TopicNotFound
from .message import DEFAULT_MAX_BODY, now_ms
from .routing import (
    REMOVED,
    Topic,
    TopicSettings,
    earlier_queues,
    text,
)
from .sending import (
    DURABILITIES,
    ON_FULL,
    Attempts,
    Outgoing,
    Sent,
    attempt_call,
    check_keyed,
    choose_queue,
    forget_indexes_async,
    index_entry,
    index_pipeline,
    index_ttl_ms,
    is_outage,
    is_replicated,
    prepare_message,
    script_sent,
    send_room,
)
from .urls import connect_async, mask_url, no_resend_on_timeout
from .validation import check_choice, check_seconds, check_topic_name, check_topic_shape

if TYPE_CHECKING:
    from .client import Client
    from .job import AsyncJob

log = logging.getLogger("redismq.aio")


class AsyncClient:
    """Sends messages from asyncio code through a redismq system's meta Redis.

    Takes the sending options of `Client` and follows its rules (`redismq.sending`) in
    `send`, `send_message`, `send_many` and `create_topic`, with the same errors. Use it
    inside one event loop and `await client.aclose()` (or `async with`) when done.
    `connection` is the asyncio meta Redis client to use instead of opening one to `url`.
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
        durability: str = "master",
        replica_timeout: float = 1.0,
        on_full: str = "raise",
        full_timeout: float = 30.0,
        send_timeout: float = DEFAULT_SEND_TIMEOUT,
        result_ttl: float = 86_400.0,
        done_ttl: float = 86_400.0,
        connection: AsyncRedis | None = None,
    ) -> None:
        self.url, self.namespace = client_settings(url, namespace)
        self.result_ttl_ms = int(result_ttl * 1000)
        self.done_ttl_ms = int(done_ttl * 1000)
        self.auto_create_topics = auto_create_topics
        self.default_queues = default_queues
        self.max_body = max_body
        self.dedup_window_ms = int(dedup_window * 1000)
        self.durability = check_choice("durability", durability, DURABILITIES)
        self.replica_timeout_ms = int(replica_timeout * 1000)
        self.on_full = check_choice("on_full", on_full, ON_FULL)
        self.full_timeout = check_seconds("full_timeout", full_timeout)
        self.send_timeout = check_seconds("send_timeout", send_timeout)
        self.meta = connection if connection is not None else connect_async(self.url)
        self.router = AsyncRouter(self.meta, self.namespace)

    @classmethod
    def like(cls, client: Client, connection: AsyncRedis | None = None) -> AsyncClient:
        """An async client with the URL, namespace and sending options of a sync client."""
        return cls(
            client.url,
            connection=connection,
            namespace=client.namespace,
            auto_create_topics=client.auto_create_topics,
            default_queues=client.default_queues,
            max_body=client.max_body,
            dedup_window=client.dedup_window_ms / 1000,
            durability=client.durability,
            replica_timeout=client.replica_timeout_ms / 1000,
            on_full=client.on_full,
            full_timeout=client.full_timeout,
            send_timeout=client.send_timeout,
            result_ttl=client.result_ttl_ms / 1000,
            done_ttl=client.done_ttl_ms / 1000,
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
        durability: str | None = None,
    ) -> Topic:
        """Create a topic of `queues` queues (idempotent); see `Client.create_topic`."""
        if durability is not None:
            check_choice("durability", durability, DURABILITIES)
        check_topic_shape(name, queues)
        with self.errors():
            return await self.router.create_topic(
                name, queues, TopicSettings(retention, hard_cap, max_backlog, durability)
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
        durability: str | None = None,
        on_full: str | None = None,
        timeout: float | None = None,
    ) -> str:
        """Send one message; returns its id once the broker has stored it (see `Client.send`)."""
        sent = await self.send_message(
            topic,
            body,
            key=key,
            delay=delay,
            dedup_key=dedup_key,
            headers=headers,
            durability=durability,
            on_full=on_full,
            timeout=timeout,
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
        durability: str | None = None,
        on_full: str | None = None,
        timeout: float | None = None,
        index_as: tuple[str, str] | None = None,
    ) -> Sent:
        """Send one message; returns where it went (see `Client.send_message`)."""
        msg = prepare_message(
            body,
            key=key,
            delay=delay,
            dedup_key=dedup_key,
            headers=headers,
            max_body=self.max_body,
            index_as=index_as,
        )
        room = self._room(on_full, timeout)
        outage = self.send_timeout if timeout is None else check_seconds("timeout", timeout)
        t = await self._send_topic(topic, outage)
        replicated = self._replicated(durability or t.durability)
        return await self._send(t, msg, replicated, room, outage)

    async def job(self, message_id: str) -> AsyncJob:
        """A task's job by its message id alone, with awaitable status, result, progress
        and cancel; raises JobNotFound."""
        from .job import find_async_job

        return await find_async_job(self, message_id)

    async def _send(
        self, t: Topic, msg: Outgoing, replicated: bool, room: float | None, outage: float
    ) -> Sent:
        """Write one message by the rules of `Attempts` (full queues, unreachable brokers)."""
        await self.router.refresh_states()
        if msg.route_key is not None:
            state = self.router.state(t.placement[choose_queue(t, msg)])
            if state == REMOVED:  # routes changed meanwhile
                t = await self._send_topic(t.name, outage)
                state = self.router.state(t.placement[choose_queue(t, msg)])
            check_keyed(t, msg, state)
        if msg.dedup_key is not None and t.earlier:  # as in Client.send_message
            first = await self._sent_before_expand(t, choose_queue(t, msg), msg)
            if first is not None:
                return first
        plan = Attempts(t, msg, self.router.usable, room=room, outage=outage)
        while True:
            url = self.url
            try:
                broker = await self.router.queue_broker(t, plan.queue)
                url = broker.url or self.url
                with no_resend_on_timeout():
                    sent = await self._write(broker, t, plan.queue, msg, replicated, plan)
            except redis.RedisError as exc:
                if not is_outage(exc):
                    raise converted(url, exc) from None
                error = converted(url, exc)
                if not plan.failed:
                    log.warning("%s; trying again", error)
                self.router.mark_down(plan.broker)
                pause, full = plan.when_unreachable(cast(RedisMQError, error)), False
            else:
                if sent is not None:
                    return sent
                pause, full = plan.when_full(), True
            if pause:
                await asyncio.sleep(pause)
                await self.router.refresh_states()
                if full:  # groups known meanwhile decide the room (the meta is up)
                    t = plan.renew(await self._fresh_topic(t))

    async def _sent_before_expand(self, t: Topic, queue: int, msg: Outgoing) -> Sent | None:
        """Where the first send of a dedup key went, if that was to another queue before the
        topic was expanded (None: not found there)."""
        assert msg.route_key is not None and msg.dedup_key is not None
        with self.errors():
            for q in earlier_queues(t, msg.route_key, queue, self.dedup_window_ms, now_ms()):
                broker = await self.router.queue_broker(t, q)
                key = self.router.queue_keys(t.name, q).dedup(msg.dedup_key)
                first = await broker.redis.get(key)
                if first is not None:
                    return Sent(text(first), t.name, q, None)
        return None

    async def _send_topic(self, name: str, outage: float) -> Topic:
        """The topic a send goes to; while the meta Redis cannot be reached, the last copy
        read, else tried again for up to `outage` seconds."""
        deadline = time.monotonic() + outage
        pause = 0.05
        while True:
            try:
                return await self.topic(name)
            except BrokerUnavailable as exc:
                known = self.router.known(name)
                if known is not None:
                    return known
                if time.monotonic() >= deadline or not str(exc).startswith("cannot reach"):
                    raise
                log.warning("%s; trying again", exc)
                await asyncio.sleep(min(pause, max(0.0, deadline - time.monotonic())))
                pause = min(0.5, pause * 2)

    async def _fresh_topic(self, t: Topic) -> Topic:
        """The topic read again (at most once per second), or `t` if it cannot be read."""
        try:
            return await self.topic(t.name)
        except RedisMQError:
            return t

    def _room(self, on_full: str | None, timeout: float | None) -> float | None:
        return send_room(on_full, timeout, self.on_full, self.full_timeout)

    def _replicated(self, durability: str | None) -> bool:
        return is_replicated(durability, self.durability)

    async def _write(
        self,
        broker: AsyncBroker,
        t: Topic,
        queue: int,
        msg: Outgoing,
        replicated: bool,
        plan: Attempts,
    ) -> Sent | None:
        """One attempt to write a message (None: the bounded queue is full), then wait for a
        replica if asked; a task's message is indexed by its id. Raises redis-py's errors."""
        qk = self.router.queue_keys(t.name, queue)
        index = index_entry(self.namespace, t.name, queue, msg)
        if replicated:
            return await self._write_replicated(broker, t, queue, msg, plan, index)
        # On a Redis Cluster the index (keyed by the id alone) lives on another slot.
        local = None if broker.cluster else index
        keys, args = attempt_call(qk, t, msg, plan, local, self.dedup_window_ms, self.result_ttl_ms)
        ttl = index_ttl_ms(self.result_ttl_ms, msg)
        late = index if index and not local and ttl else None
        if late:  # before the entry: when this fails, nothing is stored yet
            await broker.redis.set(*late, px=ttl)
        try:
            reply = await broker.scripts.send(keys=keys, args=args)
        except redis.RedisError:
            if late:  # the next attempt writes it again where it goes
                await forget_indexes_async(broker.redis, [late])
            raise
        sent = script_sent(reply, msg, t.name, queue)
        if late and (sent is None or sent.id != msg.id):  # full, or a dedup key's duplicate
            await forget_indexes_async(broker.redis, [late])
        return sent

    async def _write_replicated(
        self,
        broker: AsyncBroker,
        t: Topic,
        queue: int,
        msg: Outgoing,
        plan: Attempts,
        index: tuple[str, str] | None,
    ) -> Sent | None:
        """The send script and a WAIT on one connection (WAIT counts the replicas that have
        the writes of its own connection: on another one it would confirm nothing)."""
        if broker.cluster:
            raise no_replicated_sends(broker)
        qk = self.router.queue_keys(t.name, queue)
        keys, args = attempt_call(qk, t, msg, plan, index, self.dedup_window_ms, self.result_ttl_ms)
        reply, acked = await broker.script_on_node("send", [(keys, args)], self.replica_timeout_ms)
        sent = script_sent(reply, msg, t.name, queue)
        if sent is None:
            return None
        if acked < 1:
            raise NotReplicated(sent.id, broker.name, self.replica_timeout_ms)
        return sent

    async def send_many(
        self,
        topic: str,
        bodies: Iterable[Any],
        *,
        headers: dict[str, str] | None = None,
        durability: str | None = None,
        timeout: float | None = None,
    ) -> list[str]:
        """Send many messages round-robin over the topic's queues in one pipeline per broker.

        Returns their ids in the order of `bodies`.
        """
        sent = await self.send_many_messages(
            topic, bodies, headers=headers, durability=durability, timeout=timeout
        )
        return [s.id for s in sent]

    async def send_many_messages(
        self,
        topic: str,
        bodies: Iterable[Any],
        *,
        headers: dict[str, str] | None = None,
        durability: str | None = None,
        timeout: float | None = None,
        index_as: tuple[str, str] | None = None,
    ) -> list[Sent]:
        """Send many messages round-robin in one pipeline per broker; returns where they went
        (see `Client.send_many_messages`)."""
        msgs = prepare_batch(bodies, headers, self.max_body, index_as)
        outage = self.send_timeout if timeout is None else check_seconds("timeout", timeout)
        t = await self._send_topic(topic, outage)
        replicated = self._replicated(durability or t.durability)
        if t.max_backlog:  # every message must pass the bound: one checked send each
            room, sent = self._room(None, None), []
            try:
                for m in msgs:
                    sent.append(await self._send(t, m, replicated, room, outage))
            except RedisMQError as exc:
                raise stopped_at(exc, sent, len(msgs)) from None
            return sent
        with self.errors():
            await self.router.refresh_states()
        wait = self.replica_timeout_ms if replicated else None
        index_ms = self.result_ttl_ms if index_as else 0
        plan = BatchSend(
            t, msgs, self.router, outage=outage, replica_timeout_ms=wait, index_ttl_ms=index_ms
        )

        async def send(part: Part) -> None:
            broker = await self.router.broker(part.broker)
            if broker.cluster and replicated:
                raise no_replicated_sends(broker)
            try:
                if part.late_indexes:  # before the entries (see BatchSend)
                    await index_pipeline(broker.redis, part.late_indexes, index_ms).execute()
                if broker.cluster:  # one slot: its calls one by one
                    replies = [
                        await broker.scripts.send_batch(keys=k, args=a) for k, a in part.calls
                    ]
                else:
                    replies = await broker.script_on_node("send_batch", part.calls, plan.wait_ms)
            except redis.RedisError as exc:
                await forget_indexes_async(broker.redis, part.late_indexes)
                plan.failed(part, exc, broker.url or self.url, self.router.mark_down)
            else:
                plan.stored(part, replies)

        while True:
            with self.errors(), no_resend_on_timeout():  # gather's tasks copy this context
                await asyncio.gather(*(send(part) for part in plan.parts()))
            pause = plan.pause()
            if pause is None:
                return plan.result()
            await asyncio.sleep(pause)


def no_replicated_sends(broker: AsyncBroker) -> RedisMQError:
    """The refusal of a replicated send to a Redis Cluster broker (see `_write_replicated`)."""
    return RedisMQError(
        f"AsyncClient cannot yet make replicated sends to the Redis Cluster broker "
        f"{broker.name!r} (its WAIT would not reach the queue's master): send them "
        "with Client, or without durability='replicated'"
    )


__all__ = ["AsyncClient", "AsyncRouter", "AsyncBroker"]
