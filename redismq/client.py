"""The producer side: topics, sending, dead letters, and the factory of consumers."""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, cast

import redis

from .errors import (
    BrokerUnavailable,
    InvalidMessage,
    NotReplicated,
    QueueUnavailable,
    RedisMQError,
    TopicFull,
    TopicNotFound,
)
from .keys import DEFAULT_NAMESPACE, QueueKeys, job_index
from .message import (
    DEFAULT_MAX_BODY,
    encode_body,
    entry_fields,
    new_message_id,
    now_ms,
)
from .routing import (
    DRAINING,
    REMOVED,
    Broker,
    Router,
    Topic,
    TopicSettings,
    earlier_queues,
    queue_for_key,
)
from .urls import check_url, connect, mask_url

log = logging.getLogger("redismq.client")
DURABILITIES = ("master", "replicated")
# Tries of a keyless send on different brokers before its error is raised.
SEND_ATTEMPTS = 3

if TYPE_CHECKING:
    from redis.typing import EncodableT, FieldT

    from .consumer import Consumer
    from .deadletters import DeadLetter
    from .job import Job

DEFAULT_QUEUES = 4
DEFAULT_RETENTION = 10_000


@dataclass(frozen=True, slots=True)
class Sent:
    """Where a message went: its id, and the queue and stream entry that hold it."""

    id: str
    topic: str
    queue: int
    entry_id: str | None


class redis_errors:  # noqa: N801 - used like the context manager function it replaced
    """Context in which redis-py's connection and permission errors become one-line
    RedisMQErrors (a class, not @contextmanager: it is entered on every send)."""

    __slots__ = ("url",)

    def __init__(self, url: str) -> None:
        self.url = url

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: Any
    ) -> None:
        if exc is None:
            return
        url = mask_url(self.url)
        if isinstance(exc, redis.AuthenticationError):
            raise BrokerUnavailable(f"authentication failed at {url}: {exc}") from None
        if isinstance(exc, redis.ConnectionError | redis.TimeoutError):
            raise BrokerUnavailable(f"cannot reach Redis at {url}: {exc}") from None
        if isinstance(exc, redis.exceptions.OutOfMemoryError) or (
            isinstance(exc, redis.ResponseError) and str(exc).startswith("OOM")
        ):
            raise BrokerUnavailable(f"the broker at {url} is out of memory: {exc}") from None
        if isinstance(exc, redis.exceptions.NoPermissionError) or (
            isinstance(exc, redis.ResponseError) and str(exc).startswith("NOPERM")
        ):
            raise BrokerUnavailable(f"permission denied at {url}: {exc}") from None


def delay_ms(delay: float | timedelta | None) -> int:
    """A delay in whole milliseconds; raises InvalidMessage when negative or not a number."""
    if delay is None:
        return 0
    seconds = delay.total_seconds() if isinstance(delay, timedelta) else delay
    if (
        not isinstance(seconds, int | float)
        or isinstance(seconds, bool)
        or not math.isfinite(seconds)
    ):
        raise InvalidMessage(f"delay must be a finite number of seconds, not {delay!r}")
    if seconds < 0:
        raise InvalidMessage(f"delay must not be negative (got {seconds})")
    return int(seconds * 1000)


def client_settings(url: str | None, namespace: str | None) -> tuple[str, str]:
    """The checked URL ($REDISMQ_URL if None) and namespace ($REDISMQ_NAMESPACE, else "rmq")."""
    checked = check_url(url or os.environ.get("REDISMQ_URL", ""))
    return checked, namespace or os.environ.get("REDISMQ_NAMESPACE") or DEFAULT_NAMESPACE


@dataclass(slots=True)
class Outgoing:
    """One checked and encoded message, not yet written to a queue."""

    id: str
    fields: dict[FieldT, EncodableT]
    key: str | None = None
    dedup_key: str | None = None
    delay_ms: int = 0
    # (group, task): a task's message is indexed by its id, for `client.job(id)`.
    index_as: tuple[str, str] | None = None

    @property
    def route_key(self) -> str | None:
        """What picks the queue: the key, else the dedup key (None: round-robin)."""
        return self.key if self.key is not None else self.dedup_key

    @property
    def needs_script(self) -> bool:
        """Whether the `send` script must store it (dedup or delay) instead of a plain XADD."""
        return self.dedup_key is not None or self.delay_ms > 0


def prepare_message(
    body: Any,
    *,
    key: str | None = None,
    delay: float | timedelta | None = None,
    dedup_key: str | None = None,
    headers: dict[str, str] | None = None,
    max_body: int = DEFAULT_MAX_BODY,
    index_as: tuple[str, str] | None = None,
) -> Outgoing:
    """Check and encode one message; raises InvalidMessage before anything is sent."""
    due = delay_ms(delay)
    data, raw = encode_body(body, max_body)
    check_headers(headers)
    check_key("key", key)
    check_key("dedup_key", dedup_key)
    mid = new_message_id()
    fields = entry_fields(mid, data, raw, key=key, headers=headers)
    return Outgoing(mid, fields, key, dedup_key, due, index_as)


def index_entry(namespace: str, topic: str, queue: int, msg: Outgoing) -> tuple[str, str] | None:
    """The id index entry (key, value) a task's message is written with, else None."""
    if msg.index_as is None:
        return None
    from .job import index_value

    return job_index(namespace, msg.id), index_value(topic, queue, *msg.index_as)


def prepare_batch(
    bodies: Iterable[Any], headers: dict[str, str] | None, max_body: int = DEFAULT_MAX_BODY
) -> list[Outgoing]:
    """Check and encode many plain messages (no key, delay or dedup) sharing headers."""
    check_headers(headers)
    msgs = []
    for body in bodies:
        data, raw = encode_body(body, max_body)
        mid = new_message_id()
        msgs.append(Outgoing(mid, entry_fields(mid, data, raw, headers=headers)))
    return msgs


def choose_queue(topic: Topic, msg: Outgoing, usable: Callable[[str], bool] | None = None) -> int:
    """The queue a message goes to: by its key (or dedup key), else the next round-robin
    queue on a `usable` broker."""
    route_key = msg.route_key
    if route_key is not None:
        return queue_for_key(route_key, topic.queues)
    return topic.next_queue(usable)


def send_script_call(
    keys: QueueKeys,
    msg: Outgoing,
    dedup_window_ms: int,
    bound: int = 0,
    groups: Iterable[str] = (),
) -> tuple[list[str], list[Any]]:
    """KEYS and ARGV of the `send` script for one message (dedup, delay, and the bound of
    a queue's backlog, which counts the retries of the `groups`)."""
    names = list(groups) if bound else []
    script_keys = [keys.stream, keys.delayed, keys.dedup(msg.dedup_key or ""), keys.counters]
    for g in names:
        script_keys += [keys.retry_stream(g), keys.retry(g)]
    args: list[Any] = [msg.id, dedup_window_ms if msg.dedup_key else 0]
    args.append(now_ms() + msg.delay_ms if msg.delay_ms else 0)
    args += [bound, len(names), *names]
    for name, value in msg.fields.items():
        args += [name, value]
    return script_keys, args


def script_sent(reply: list[Any], topic: str, queue: int) -> Sent | None:
    """Where the `send` script put a message (the first id if it was a duplicate); None
    when the queue was full."""
    sent_id, outcome = reply
    if outcome == -1:
        return None
    return Sent(sent_id.decode(), topic, queue, None)


def full_message(topic: Topic) -> str:
    return (
        f"topic {topic.name!r} is full: its backlog reached its bound of {topic.max_backlog} "
        f"unfinished messages"
    )


def queue_bound(topic: Topic) -> int:
    """The most unfinished messages one queue of a bounded topic may hold (0: no bound)."""
    return -(-topic.max_backlog // topic.queues) if topic.max_backlog else 0


def batch_by_broker(topic: Topic, queues: list[int]) -> dict[str, list[int]]:
    """The positions of a batch's messages grouped by the broker of their queue, in order."""
    groups: dict[str, list[int]] = {}
    for i, queue in enumerate(queues):
        groups.setdefault(topic.placement[queue], []).append(i)
    return groups


def batch_sent(
    topic: str, msgs: list[Outgoing], queues: list[int], entries: list[str | None]
) -> list[Sent]:
    """Where each message of a batch went, in the order they were given."""
    return [Sent(m.id, topic, q, e) for m, q, e in zip(msgs, queues, entries, strict=True)]


class Client:
    """Connects to a redismq system through its meta Redis (a single broker is its own meta).

    `url` defaults to $REDISMQ_URL and `namespace` (the prefix of every key) to
    $REDISMQ_NAMESPACE, else "rmq".
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
        result_ttl: float = 86_400.0,
        done_ttl: float = 86_400.0,
    ) -> None:
        self.url, self.namespace = client_settings(url, namespace)
        self.auto_create_topics = auto_create_topics
        self.default_queues = default_queues
        self.max_body = max_body
        self.dedup_window_ms = int(dedup_window * 1000)
        self.durability = durability
        self.on_full = on_full
        self.full_timeout = full_timeout
        self.replica_timeout_ms = int(replica_timeout * 1000)
        self._replicated(durability)
        self.result_ttl_ms = int(result_ttl * 1000)
        self.done_ttl_ms = int(done_ttl * 1000)
        self.meta = connect(self.url)
        self.router = Router(self.meta, self.namespace)
        self._announced: set[str] = set()  # topics this client created by sending to them

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
        if name not in self._announced:  # once per topic and client
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

        Without a key, a message whose broker fails goes to a queue on another broker; a
        keyed message stays on its queue (moving it would break its order) and the error
        is raised. `index_as=(group, task)` (tasks do it) lets `job(id)` find it.
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
        t = self.topic(topic)
        replicated = self._replicated(durability or t.durability)
        queue = choose_queue(t, msg, self.router.usable)
        if msg.route_key is not None:
            state = self.router.state(t.placement[queue])
            if state == REMOVED:  # routes changed meanwhile
                t = self.topic(topic)
                state = self.router.state(t.placement[queue])
            if state == DRAINING:
                raise QueueUnavailable(
                    f"queue {queue} of {topic!r} is on broker {t.placement[queue]!r}, which is "
                    f"draining (read-only); a keyed message stays on its queue to keep its order"
                )
        if msg.dedup_key is not None and t.earlier:
            first = self._sent_before_expand(t, queue, msg)
            if first is not None:
                return first
        for attempt in range(SEND_ATTEMPTS):
            try:
                return self._send_to(t, queue, msg, replicated, self._room(on_full, timeout))
            except BrokerUnavailable as exc:
                broker = t.placement[queue]
                self.router.mark_down(broker)
                if msg.route_key is not None:
                    raise QueueUnavailable(
                        f"queue {queue} of {topic!r} (broker {broker!r}) cannot take the "
                        f"message: {exc}; a keyed message stays on its queue to keep its order"
                    ) from None
                if attempt == SEND_ATTEMPTS - 1:
                    raise
                log.warning("%s; sending to another broker", exc)
                t = self.topic(topic)
                queue = t.next_queue(self.router.usable)
        raise AssertionError("unreachable")

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
                    return Sent(first.decode(), t.name, q, None)
        return None

    def _room(self, on_full: str | None, timeout: float | None) -> float | None:
        """How long a send waits for room in a full topic (None: it raises at once)."""
        chosen = on_full or self.on_full
        if chosen not in ("raise", "block"):
            raise InvalidMessage(f"on_full must be 'raise' or 'block', not {chosen!r}")
        return None if chosen == "raise" else (self.full_timeout if timeout is None else timeout)

    def _replicated(self, durability: str | None) -> bool:
        chosen = durability or self.durability
        if chosen not in DURABILITIES:
            raise InvalidMessage(f"durability must be one of {', '.join(DURABILITIES)}")
        return chosen == "replicated"

    def _send_to(
        self, t: Topic, queue: int, msg: Outgoing, replicated: bool, room: float | None
    ) -> Sent:
        """Write one message to one queue (waiting for a replica if asked, and up to `room`
        seconds for room in a bounded topic; None: raise TopicFull at once)."""
        deadline = time.monotonic() + (room or 0.0)
        pause = 0.01
        while True:
            sent = self._write(t, queue, msg, replicated)
            if sent is not None:
                return sent
            if room is None or time.monotonic() >= deadline:
                raise TopicFull(full_message(t))
            time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
            pause = min(0.2, pause * 2)

    def _write(self, t: Topic, queue: int, msg: Outgoing, replicated: bool) -> Sent | None:
        """Write one message (None: the bounded queue is full), then wait for a replica if
        asked. The script is called on its own, not in a pipeline, so that redis-py loads it
        again when a restarted server has lost it."""
        qk = self.router.queue_keys(t.name, queue)
        bound = queue_bound(t)
        index = index_entry(self.namespace, t.name, queue, msg)
        with self.errors():
            broker = self.router.queue_broker(t, queue)
            if msg.needs_script or bound > 0:
                keys, args = send_script_call(qk, msg, self.dedup_window_ms, bound, t.groups)
                if replicated and broker.cluster:  # WAIT on the slot's master, same connection
                    reply, acked = self._send_and_wait(broker, keys, args)
                else:
                    reply = broker.scripts.send(keys=keys, args=args)
                    acked = broker.redis.wait(1, self.replica_timeout_ms) if replicated else 1
                sent = script_sent(reply, t.name, queue)
                if sent is None:
                    return None
            elif replicated:

                def fill(pipe: Any) -> None:
                    pipe.xadd(qk.stream, msg.fields)
                    pipe.wait(1, self.replica_timeout_ms)

                entry, acked = broker.on_node(qk.stream, fill)
                sent = Sent(msg.id, t.name, queue, entry.decode())
            elif index and not broker.cluster:  # a task's entry and its id index at once
                pipe = broker.redis.pipeline(transaction=False)
                pipe.xadd(qk.stream, msg.fields)
                pipe.set(*index, px=self.result_ttl_ms)
                return Sent(msg.id, t.name, queue, pipe.execute()[0].decode())
            else:
                entry = broker.redis.xadd(qk.stream, msg.fields)
                sent, acked = Sent(msg.id, t.name, queue, cast(bytes, entry).decode()), 1
            if index and sent.id == msg.id:  # a task's: findable by its id (client.job)
                broker.redis.set(*index, px=self.result_ttl_ms)
        if acked < 1:
            raise NotReplicated(sent.id, broker.name, self.replica_timeout_ms)
        return sent

    def _send_and_wait(self, broker: Broker, keys: list[str], args: list[Any]) -> tuple[Any, int]:
        """The `send` script and a WAIT in one pipeline on the master of the queue's slot (a
        Redis Cluster's WAIT elsewhere would count another master's replicas)."""
        sha = broker.scripts.send.sha

        def fill(pipe: Any) -> None:
            pipe.evalsha(sha, len(keys), *keys, *args)
            pipe.wait(1, self.replica_timeout_ms)

        try:
            reply, acked = broker.on_node(keys[0], fill)
        except redis.exceptions.NoScriptError:
            broker.redis.script_load(broker.scripts.send.script)
            reply, acked = broker.on_node(keys[0], fill)
        return reply, acked

    def send_many(
        self,
        topic: str,
        bodies: Iterable[Any],
        *,
        headers: dict[str, str] | None = None,
        durability: str | None = None,
    ) -> list[str]:
        """Send many messages round-robin over the topic's queues in one pipeline per broker."""
        return [
            s.id
            for s in self.send_many_messages(topic, bodies, headers=headers, durability=durability)
        ]

    def send_many_messages(
        self,
        topic: str,
        bodies: Iterable[Any],
        *,
        headers: dict[str, str] | None = None,
        durability: str | None = None,
    ) -> list[Sent]:
        """Send many messages round-robin in one pipeline per broker; returns where they went.

        Queues on brokers known to be down or draining are skipped.
        """
        msgs = prepare_batch(bodies, headers, self.max_body)
        t = self.topic(topic)
        replicated = self._replicated(durability or t.durability)
        if t.max_backlog:  # every message must pass the bound: one checked send each
            room = self._room(None, None)
            return [
                self._send_to(t, t.next_queue(self.router.usable), m, replicated, room)
                for m in msgs
            ]
        queues = [t.next_queue(self.router.usable) for _ in msgs]
        entries: list[str | None] = [None] * len(msgs)
        with self.errors():
            for broker, indexes in self._batch_by_broker(t, queues).items():
                streams = [self.router.queue_keys(topic, queues[i]).stream for i in indexes]

                def fill(pipe: Any, streams: list[str] = streams, indexes: list[int] = indexes):
                    for stream, i in zip(streams, indexes, strict=True):
                        pipe.xadd(stream, msgs[i].fields)
                    if replicated:
                        pipe.wait(1, self.replica_timeout_ms)

                replies = broker.on_node(streams[0], fill)
                if replicated and replies.pop() < 1:
                    raise NotReplicated(msgs[indexes[0]].id, broker.name, self.replica_timeout_ms)
                for i, entry in zip(indexes, replies, strict=True):
                    entries[i] = entry.decode()
        return batch_sent(topic, msgs, queues, entries)

    def _batch_by_broker(self, t: Topic, queues: list[int]) -> dict[Broker, list[int]]:
        """The positions of a batch's messages grouped by the broker of their queue (on a
        Redis Cluster: by the queue's hash tag, one slot), in order."""
        groups: dict[Broker, list[int]] = {}
        for name, indexes in batch_by_broker(t, queues).items():
            if not self.router.broker(name).cluster:
                groups[self.router.broker(name)] = indexes
                continue
            for i in indexes:
                groups.setdefault(self.router.queue_broker(t, queues[i]), []).append(i)
        return groups

    def trim(self, topic: str) -> tuple[int, int]:
        """Trim every queue of a topic by its retention; returns (trimmed, dropped).

        Never removes an entry some group has not acknowledged, nor, on a queue where a
        group registered for the topic has no group yet, any entry at all, unless the topic
        has a hard cap (then what it dropped is counted in status).
        """
        t = self.topic(topic, create=False)
        trimmed = dropped = 0
        with self.errors():
            for q in range(t.queues):
                k = self.router.queue_keys(topic, q)
                broker = self.router.queue_broker(t, q)
                a, b = broker.scripts.trim(
                    keys=[k.stream, k.counters], args=[t.retention, t.hard_cap, *t.groups]
                )
                trimmed, dropped = trimmed + a, dropped + b
        return trimmed, dropped

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
        return (OrderedConsumer if ordered else Consumer)(
            self,
            t,
            group,
            visibility_timeout=visibility_timeout,
            max_retries=max_retries,
            backoff=backoff,
            name=name,
            queues=queues,
        )

    # -- jobs ------------------------------------------------------------------------
    def job(self, message_id: str) -> Job:
        """A task's job by its message id alone (status, result, progress, cancel); raises
        JobNotFound for an id no task was sent with (or whose record expired)."""
        from .job import find_job

        return find_job(self, message_id)

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


def check_topic_name(name: str) -> None:
    """Raise InvalidMessage unless the name can be used as a topic or group name."""
    if not isinstance(name, str) or not name or len(name) > 200:
        raise InvalidMessage(f"a name must be a non-empty string of up to 200 characters: {name!r}")
    bad = set("{}#:\n\r\t ") & set(name)
    if bad:
        raise InvalidMessage(f"name {name!r} must not contain {''.join(sorted(bad))!r}")


def check_topic_shape(name: str, queues: int) -> None:
    """Raise InvalidMessage unless a topic of that name and number of queues can be made."""
    check_topic_name(name)
    if not isinstance(queues, int) or not 1 <= queues <= 1024:
        raise InvalidMessage(f"queues must be a whole number from 1 to 1024, not {queues!r}")


def check_key(what: str, value: str | None) -> None:
    """Raise InvalidMessage unless the value is None or a non-empty encodable string."""
    if value is None:
        return
    if not isinstance(value, str) or not value:
        raise InvalidMessage(f"{what} must be a non-empty string, not {value!r}")
    try:
        value.encode()
    except UnicodeEncodeError:
        raise InvalidMessage(f"{what} is not encodable as UTF-8: {value!r}") from None


def check_headers(headers: dict[str, str] | None) -> None:
    if headers is None:
        return
    if not isinstance(headers, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
    ):
        raise InvalidMessage("headers must be a dict of strings to strings")


__all__ = ["Client", "Sent", "RedisMQError"]
