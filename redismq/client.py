"""The producer side: topics, sending, dead letters, and the factory of consumers."""

from __future__ import annotations

import logging
import os
import time
import weakref
from collections.abc import Iterable
from datetime import timedelta
from typing import TYPE_CHECKING, Any, cast

import redis

from .batching import BatchSend, prepare_batch, stopped_at
from .errors import (
    BrokerUnavailable,
    NotReplicated,
    RedisMQError,
    TopicNotFound,
)
from .keys import DEFAULT_NAMESPACE
from .message import DEFAULT_MAX_BODY, now_ms
from .redis_errors import converted, redis_errors
from .routing import (
    REMOVED,
    Broker,
    Router,
    Topic,
    TopicSettings,
    earlier_queues,
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
    forget_indexes,
    index_entry,
    index_pipeline,
    index_ttl_ms,
    is_outage,
    is_replicated,
    prepare_message,
    script_sent,
    send_room,
)
from .urls import DEFAULT_URL, check_url, connect, mask_url, no_resend_on_timeout
from .validation import (  # noqa: F401 - check_key, check_headers and delay_ms: public here too
    check_choice,
    check_headers,
    check_key,
    check_seconds,
    check_topic_name,
    check_topic_shape,
    delay_ms,
)

log = logging.getLogger("redismq.client")

if TYPE_CHECKING:
    from .consumer import Consumer
    from .deadletters import DeadLetter
    from .job import Job

DEFAULT_QUEUES = 4
DEFAULT_RETENTION = 10_000
# How long a send keeps trying to reach its broker before it raises (Client(send_timeout=)).
DEFAULT_SEND_TIMEOUT = 10.0


def client_settings(url: str | None, namespace: str | None) -> tuple[str, str]:
    """The checked URL (if None: $REDISMQ_URL, else DEFAULT_URL, as the CLI) and namespace
    ($REDISMQ_NAMESPACE, else "rmq")."""
    checked = check_url(url or os.environ.get("REDISMQ_URL") or DEFAULT_URL)
    return checked, namespace or os.environ.get("REDISMQ_NAMESPACE") or DEFAULT_NAMESPACE


class Client:
    """Connects to a redismq system through its meta Redis (a single broker is its own meta).

    `url` defaults to $REDISMQ_URL, else redis://127.0.0.1:6379/0 (as the CLI), and
    `namespace` (the prefix of every key) to
    $REDISMQ_NAMESPACE, else "rmq". `connection` is the meta Redis client to use instead of
    opening one to `url` (a test hands in its own, e.g. fakeredis); `url` still names it in
    errors. Brokers registered with their own URL are connected to as always.
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
        connection: redis.Redis | None = None,
    ) -> None:
        self.url, self.namespace = client_settings(url, namespace)
        self.auto_create_topics = auto_create_topics
        self.default_queues = default_queues
        self.max_body = max_body
        self.dedup_window_ms = int(dedup_window * 1000)
        self.durability = check_choice("durability", durability, DURABILITIES)
        self.on_full = check_choice("on_full", on_full, ON_FULL)
        self.full_timeout = check_seconds("full_timeout", full_timeout)
        self.send_timeout = check_seconds("send_timeout", send_timeout)
        self.replica_timeout_ms = int(replica_timeout * 1000)
        self.result_ttl_ms = int(result_ttl * 1000)
        self.done_ttl_ms = int(done_ttl * 1000)
        self.meta = connection if connection is not None else connect(self.url)
        # Consumers made by `consumer()` and not closed yet: `close()` closes them.
        self.open_consumers: weakref.WeakSet[Consumer] = weakref.WeakSet()
        self.router = Router(self.meta, self.namespace)
        self._announced: set[str] = set()  # topics this client created by sending to them
        # Whether creating a topic by sending to it is logged (testing's eager clients,
        # whose topics live in memory for a unit test, do not).
        self.announce_created_topics = True

    def __repr__(self) -> str:
        return f"Client({mask_url(self.url)!r}, namespace={self.namespace!r})"

    def errors(self) -> Any:
        """Context in which redis-py errors become one-line RedisMQErrors."""
        return redis_errors(self.url)

    def ping(self) -> None:
        """Check that the meta Redis answers; raises BrokerUnavailable."""
        with self.errors():
            self.meta.ping()

    def close(self) -> None:
        """Close the consumers made by this client and not closed yet (each leaves its
        group where it holds nothing), then every connection of this client."""
        for consumer in list(self.open_consumers):
            try:
                consumer.close()
            except (RedisMQError, redis.RedisError) as exc:  # a broker away, a group deleted
                log.warning("cannot close consumer %s: %s", consumer, exc)
        self.router.close()
        self.meta.close()

    # -- topics ----------------------------------------------------------------------
    def create_topic(
        self,
        name: str,
        queues: int = DEFAULT_QUEUES,
        *,
        retention: int = DEFAULT_RETENTION,
        hard_cap: int = 0,
        max_backlog: int = 0,
        durability: str | None = None,
    ) -> Topic:
        """Create a topic of `queues` queues (idempotent).

        `retention`: the length each queue's stream is trimmed to, counting only entries
        every group has acknowledged (what a group still needs is always kept, so a queue
        can be longer); a group created later finds the retained history. `hard_cap`: if
        > 0, a queue never holds more entries, even unacknowledged ones; what that drops
        is counted. `max_backlog`: if > 0, sends are refused (TopicFull) or wait while the
        topic holds that many unfinished messages (split evenly over its queues).
        `durability`: the default of sends to this topic ("master" or "replicated").
        """
        if durability is not None:
            self._replicated(durability)
        check_topic_shape(name, queues)
        with self.errors():
            return self.router.create_topic(
                name, queues, TopicSettings(retention, hard_cap, max_backlog, durability)
            )

    def topic(self, name: str, *, create: bool | None = None) -> Topic:
        """A topic's record; creates it when missing if auto-creation is on."""
        cached = self.router.cached(name)
        if cached is not None:
            return cached
        check_topic_name(name)
        create = self.auto_create_topics if create is None else create
        with self.errors():
            try:
                return self.router.topic(name)
            except TopicNotFound:
                if not create:
                    raise
        created = self.create_topic(name, self.default_queues)
        if self.announce_created_topics and name not in self._announced:  # once per topic
            self._announced.add(name)
            log.warning(
                "topic %r did not exist: created it with %d queues (auto_create_topics=True; "
                "create topics with: redismq topic create %s --queues N)",
                name,
                self.default_queues,
                name,
            )
        return created

    def topics(self) -> list[str]:
        with self.errors():
            return self.router.topic_names()

    # -- sending ---------------------------------------------------------------------
    def send(
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
        """Send one message; returns its id once the broker has stored it.

        `durability="replicated"` also waits until a replica has it (else NotReplicated).
        In a bounded topic that is full, `on_full="raise"` raises TopicFull at once and
        `on_full="block"` waits up to `timeout` seconds for room, then raises TopicFull.
        A broker that cannot be reached is tried again for up to `timeout` seconds
        (default: the client's `send_timeout`), then BrokerUnavailable is raised.
        """
        return self.send_message(
            topic,
            body,
            key=key,
            delay=delay,
            dedup_key=dedup_key,
            headers=headers,
            durability=durability,
            on_full=on_full,
            timeout=timeout,
        ).id

    def send_message(
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
        """Send one message; returns where it went (id, queue and stream entry).

        Without a key, a message goes to the next queue round-robin, skipping queues that
        are full or on a broker that is down or draining. A keyed message stays on its
        queue (moving it would break its order): it waits for room and for its broker.
        A retry of an attempt whose reply was lost stores nothing twice.
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
        return self.send_outgoing(topic, msg, durability, on_full, timeout)

    def send_outgoing(
        self,
        topic: str,
        msg: Outgoing,
        durability: str | None = None,
        on_full: str | None = None,
        timeout: float | None = None,
    ) -> Sent:
        """Send a message `prepare_message` made (as `send_message` does): for the outbox
        relay, which sends a row under the row's own id."""
        room = self._room(on_full, timeout)
        outage = self.send_timeout if timeout is None else check_seconds("timeout", timeout)
        t = self._send_topic(topic, outage)
        replicated = self._replicated(durability or t.durability)
        return self._send(t, msg, replicated, room, outage)

    def _send(
        self, t: Topic, msg: Outgoing, replicated: bool, room: float | None, outage: float
    ) -> Sent:
        """Write one message by the rules of `Attempts` (full queues, unreachable brokers)."""
        if msg.route_key is not None:
            state = self.router.state(t.placement[choose_queue(t, msg)])
            if state == REMOVED:  # routes changed meanwhile
                t = self._send_topic(t.name, outage)
                state = self.router.state(t.placement[choose_queue(t, msg)])
            check_keyed(t, msg, state)
        if msg.dedup_key is not None and t.earlier:
            first = self._sent_before_expand(t, choose_queue(t, msg), msg)
            if first is not None:
                return first
        plan = Attempts(t, msg, self.router.usable, room=room, outage=outage)
        while True:
            url = self.url
            try:
                broker = self.router.queue_broker(t, plan.queue)
                url = broker.url or self.url
                with no_resend_on_timeout():
                    sent = self._write(broker, t, plan.queue, msg, replicated, plan)
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
                time.sleep(pause)
                if full:  # groups known meanwhile decide the room (the meta is up)
                    t = plan.renew(self._fresh_topic(t))

    def _sent_before_expand(self, t: Topic, queue: int, msg: Outgoing) -> Sent | None:
        """Where the first send of a dedup key went, if that was to another queue before the
        topic was expanded (None: not found there)."""
        assert msg.route_key is not None and msg.dedup_key is not None
        window = self.dedup_window_ms
        with self.errors():
            for q in earlier_queues(t, msg.route_key, queue, window, now_ms()):
                broker = self.router.queue_broker(t, q)
                first = broker.redis.get(self.router.queue_keys(t.name, q).dedup(msg.dedup_key))
                if first is not None:
                    return Sent(cast(bytes, first).decode(), t.name, q, None)
        return None

    def _send_topic(self, name: str, outage: float) -> Topic:
        """The topic a send goes to; while the meta Redis cannot be reached, the last copy
        read, else tried again for up to `outage` seconds."""
        deadline = time.monotonic() + outage
        pause = 0.05
        while True:
            try:
                return self.topic(name)
            except BrokerUnavailable as exc:
                known = self.router.known(name)
                if known is not None:
                    return known
                if time.monotonic() >= deadline or not str(exc).startswith("cannot reach"):
                    raise
                log.warning("%s; trying again", exc)
                time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
                pause = min(0.5, pause * 2)

    def _fresh_topic(self, t: Topic) -> Topic:
        """The topic read again (at most once per second), or `t` if it cannot be read."""
        try:
            return self.topic(t.name)
        except RedisMQError:
            return t

    def _room(self, on_full: str | None, timeout: float | None) -> float | None:
        return send_room(on_full, timeout, self.on_full, self.full_timeout)

    def _replicated(self, durability: str | None) -> bool:
        return is_replicated(durability, self.durability)

    def _write(
        self, broker: Broker, t: Topic, queue: int, msg: Outgoing, replicated: bool, plan: Attempts
    ) -> Sent | None:
        """One attempt to write a message (None: the bounded queue is full), then wait for a
        replica if asked; a task's message is indexed by its id. Raises redis-py's errors."""
        qk = self.router.queue_keys(t.name, queue)
        index = index_entry(self.namespace, t.name, queue, msg)
        # On a Redis Cluster the index (keyed by the id alone) lives on another slot.
        local = None if broker.cluster else index
        keys, args = attempt_call(qk, t, msg, plan, local, self.dedup_window_ms, self.result_ttl_ms)
        ttl = index_ttl_ms(self.result_ttl_ms, msg)
        late = index if index and not local and ttl else None
        if late:  # before the entry: when this fails, nothing is stored yet
            broker.redis.set(*late, px=ttl)
        try:
            if replicated:
                reply, acked = broker.script_on_node(
                    "send", keys[0], [(keys, args)], self.replica_timeout_ms
                )
            else:
                reply, acked = broker.send_call(keys, args), 1
        except redis.RedisError:
            if late:  # the next attempt writes it again where it goes
                forget_indexes(broker.redis, [late])
            raise
        sent = script_sent(reply, msg, t.name, queue)
        if late and (sent is None or sent.id != msg.id):  # full, or a dedup key's duplicate
            forget_indexes(broker.redis, [late])
        if sent is None:
            return None
        if acked < 1:
            raise NotReplicated(sent.id, broker.name, self.replica_timeout_ms)
        return sent

    # -- jobs ------------------------------------------------------------------------
    def job(self, message_id: str) -> Job:
        """A task's job by its message id alone (status, result, progress, cancel); raises
        JobNotFound for an id no task was sent with (or whose record expired)."""
        from .job import find_job

        return find_job(self, message_id)

    def send_many(
        self,
        topic: str,
        bodies: Iterable[Any],
        *,
        headers: dict[str, str] | None = None,
        durability: str | None = None,
        timeout: float | None = None,
    ) -> list[str]:
        """Send many messages round-robin over the topic's queues in one pipeline per broker."""
        sent = self.send_many_messages(
            topic, bodies, headers=headers, durability=durability, timeout=timeout
        )
        return [s.id for s in sent]

    def send_many_messages(
        self,
        topic: str,
        bodies: Iterable[Any],
        *,
        headers: dict[str, str] | None = None,
        durability: str | None = None,
        timeout: float | None = None,
        index_as: tuple[str, str] | None = None,
    ) -> list[Sent]:
        """Send many messages round-robin in one pipeline per broker; returns where they went.

        Queues on brokers known to be down or draining are skipped; the part of a broker
        that cannot be reached goes to the others, else is tried again for up to `timeout`
        seconds (default: the client's `send_timeout`), by the rules of `BatchSend`. In a
        bounded topic each message is sent on its own, by the rules of `send_message`.
        `index_as` (group, task): tasks' messages, each indexed by its id for `job(id)`.
        """
        msgs = prepare_batch(bodies, headers, self.max_body, index_as)
        outage = self.send_timeout if timeout is None else check_seconds("timeout", timeout)
        t = self._send_topic(topic, outage)
        replicated = self._replicated(durability or t.durability)
        if t.max_backlog:  # every message must pass the bound: one checked send each
            room, sent = self._room(None, None), []
            try:
                for m in msgs:
                    sent.append(self._send(t, m, replicated, room, outage))
            except RedisMQError as exc:
                raise stopped_at(exc, sent, len(msgs)) from None
            return sent
        wait = self.replica_timeout_ms if replicated else None
        index_ms = self.result_ttl_ms if index_as else 0
        plan = BatchSend(
            t, msgs, self.router, outage=outage, replica_timeout_ms=wait, index_ttl_ms=index_ms
        )
        while True:
            for part in plan.parts():
                with self.errors():
                    broker = self.router.queue_broker(t, plan.queues[part.indexes[0]])
                try:
                    with no_resend_on_timeout():
                        if part.late_indexes:  # before the entries (see BatchSend)
                            index_pipeline(broker.redis, part.late_indexes, index_ms).execute()
                        replies = broker.script_on_node(
                            "send_batch", part.key, part.calls, plan.wait_ms
                        )
                except redis.RedisError as exc:
                    forget_indexes(broker.redis, part.late_indexes)
                    plan.failed(part, exc, broker.url or self.url, self.router.mark_down)
                else:
                    plan.stored(part, replies)
            pause = plan.pause()
            if pause is None:
                return plan.result()
            time.sleep(pause)

    def trim(self, topic: str, queues: Iterable[int] | None = None) -> tuple[int, int]:
        """Trim a topic's queues (default: all) by its retention; returns (trimmed, dropped).

        Never removes an entry some group has not acknowledged, nor, on a queue where a
        group registered for the topic has no group yet, any entry at all, unless the topic
        has a hard cap (then what it dropped is counted in status).
        """
        from .retention import trim

        return trim(self, topic, queues)

    # -- consuming -------------------------------------------------------------------
    def consumer(
        self,
        topic: str,
        group: str,
        *,
        visibility_timeout: float = 30.0,
        max_retries: int = 3,
        backoff: float = 1.0,
        name: str | None = None,
        create: bool = False,
        queues: Iterable[int] | None = None,
        ordered: bool = False,
    ) -> Consumer:
        """A consumer of every queue of a topic (or of `queues`), as a member of `group`.

        The topic must exist unless `create` is true. A group created after messages were
        sent starts at the oldest retained entry. `ordered=True` gives an OrderedConsumer
        (queue leases, strict order, retries in place).
        """
        from .consumer import Consumer
        from .ordered import OrderedConsumer

        t = self.topic(topic, create=create)
        consumer = (OrderedConsumer if ordered else Consumer)(
            self,
            t,
            group,
            visibility_timeout=visibility_timeout,
            max_retries=max_retries,
            backoff=backoff,
            name=name,
            queues=queues,
        )
        self.open_consumers.add(consumer)
        return consumer

    # -- lifecycle -------------------------------------------------------------------
    def groups(self, topic: str) -> list[dict[str, Any]]:
        """The groups registered for a topic, with their counts and whether a live worker
        consumes each (`live`)."""
        from .lifecycle import list_groups

        return list_groups(self, topic)

    def delete_group(self, topic: str, group: str, *, force: bool = False) -> None:
        """Delete a group of a topic; refused (InUse) while it has pending, retrying or dead
        messages unless `force`."""
        from .lifecycle import delete_group

        delete_group(self, topic, group, force=force)

    def delete_topic(self, topic: str, *, force: bool = False) -> None:
        """Delete a topic and everything its queues keep; refused (InUse) while anything is
        unfinished unless `force`."""
        from .lifecycle import delete_topic

        delete_topic(self, topic, force=force)

    # -- dead letters ----------------------------------------------------------------
    def dead_letters(self, topic: str, group: str, *, count: int = 100) -> list[DeadLetter]:
        """The oldest dead letters of a group, over all queues of the topic."""
        from .deadletters import read_dead_letters

        with self.errors():
            return read_dead_letters(self, self.topic(topic, create=False), group, count)

    def purge_dead_letters(
        self, topic: str, group: str, *, ids: Iterable[str] | None = None
    ) -> int:
        """Delete a group's dead letters (all, or those with these message ids)."""
        from .deadletters import purge

        with self.errors():
            return purge(self, self.topic(topic, create=False), group, ids)

    def replay_dead_letters(
        self, topic: str, group: str, *, ids: Iterable[str] | None = None, count: int = 1000
    ) -> int:
        """Give dead letters back to their group (only) with a fresh attempt count.

        `ids` are dead-letter message ids; without them, up to `count` per queue.
        Returns how many were replayed.
        """
        from .deadletters import replay

        with self.errors():
            return replay(self, self.topic(topic, create=False), group, ids, count)


__all__ = ["Client", "Sent", "RedisMQError"]
