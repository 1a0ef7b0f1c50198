"""The send protocol shared by `Client` and `AsyncClient`: a checked message, the script
call that writes it, and the rules of one send's attempts (which queue, how long to wait).

Both clients do only the I/O; every decision is made here, so that they cannot drift.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, NamedTuple

import redis

from .errors import QueueUnavailable, RedisMQError, TopicFull
from .job import index_value
from .keys import QueueKeys, job_index
from .message import (
    DEFAULT_MAX_BODY,
    encode_body,
    entry_fields,
    new_message_id,
    now_ms,
)
from .routing import DRAINING, Topic, queue_for_key
from .validation import check_choice, check_headers, check_key, delay_ms

if TYPE_CHECKING:
    from redis.typing import EncodableT, FieldT

# How long the record that makes a send's retries no-ops outlives the send's deadline (a
# send without one keeps it this long too): redis-py sends a call again on a new
# connection when the old one broke, after up to 3 reconnects of up to 5 s each and their
# backoff, and that copy must find it.
GUARD_SLACK = 20.0
# Pauses between attempts: waiting for room, and waiting for a broker to come back.
ROOM_PAUSE = (0.01, 0.2)
OUTAGE_PAUSE = (0.05, 0.5)


class Sent(NamedTuple):
    """Where a message went: its id, and the queue and stream entry that hold it."""

    id: str
    topic: str
    queue: int
    entry_id: str | None


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


def prepare_message(
    body: Any,
    *,
    key: str | None = None,
    delay: float | timedelta | None = None,
    dedup_key: str | None = None,
    headers: dict[str, str] | None = None,
    max_body: int = DEFAULT_MAX_BODY,
    index_as: tuple[str, str] | None = None,
    message_id: str | None = None,
) -> Outgoing:
    """Check and encode one message (`message_id`: its id, else a new one); raises
    InvalidMessage before anything is sent."""
    due = delay_ms(delay)
    data, raw = encode_body(body, max_body)
    check_headers(headers)
    check_key("key", key)
    check_key("dedup_key", dedup_key)
    check_key("message_id", message_id)
    mid = message_id or new_message_id()
    fields = entry_fields(mid, data, raw, key=key, headers=headers, dedup_key=dedup_key)
    return Outgoing(mid, fields, key, dedup_key, due, index_as)


DURABILITIES = ("master", "replicated")
ON_FULL = ("raise", "block")


def send_room(
    on_full: str | None, timeout: float | None, default: str, full_timeout: float
) -> float | None:
    """How long a send waits for room in a full topic (None: it raises at once); `default`
    and `full_timeout` are the client's, checked when it was made."""
    chosen = default if on_full is None else check_choice("on_full", on_full, ON_FULL)
    return None if chosen == "raise" else (full_timeout if timeout is None else timeout)


def is_replicated(durability: str | None, default: str) -> bool:
    """Whether a send waits for a replica (`default`: the client's, checked when made)."""
    if durability is not None:
        check_choice("durability", durability, DURABILITIES)
    return (durability or default) == "replicated"


def index_entry(namespace: str, topic: str, queue: int, msg: Outgoing) -> tuple[str, str] | None:
    """The id index entry (key, value) a task's message is written with, else None."""
    if msg.index_as is None:
        return None
    due = now_ms() + msg.delay_ms if msg.delay_ms else 0
    return job_index(namespace, msg.id), index_value(topic, queue, *msg.index_as, due)


def index_pipeline(r: Any, indexes: list[tuple[str, str]], ttl_ms: int) -> Any:
    """A pipeline (sync or asyncio, as `r` is) that writes id indexes before their entries
    (on a Redis Cluster, where they live on other slots), each kept `ttl_ms`."""
    pipe = r.pipeline(transaction=False)
    for key, value in indexes:
        pipe.set(key, value, px=ttl_ms)
    return pipe


def forget_indexes(r: Any, indexes: list[tuple[str, str]]) -> None:
    """Remove the id indexes an attempt wrote before its entries (on a Redis Cluster) when
    it stored nothing under those ids there: a stale one would send `job(id)` to the wrong
    queue. Best effort: one that cannot be removed now expires with its TTL."""
    if indexes:
        with contextlib.suppress(redis.RedisError):
            r.delete(*(key for key, _ in indexes))


async def forget_indexes_async(r: Any, indexes: list[tuple[str, str]]) -> None:
    """`forget_indexes` on an asyncio client."""
    if indexes:
        with contextlib.suppress(redis.RedisError):
            await r.delete(*(key for key, _ in indexes))


def index_ttl_ms(result_ttl_ms: int, msg: Outgoing) -> int:
    """How long a task's id index lasts: result_ttl past the time the task is due."""
    return result_ttl_ms + msg.delay_ms


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
    plan: Attempts | None = None,
    index: tuple[str, str] | None = None,
    index_ttl_ms: int = 0,
) -> tuple[list[str], list[Any]]:
    """KEYS and ARGV of the `send` script for one message: its dedup key (else, by the
    `plan` of its attempts, a record of its id that makes a retry of this send a no-op), its
    delay, the bound of the queue's backlog (which counts the `groups`), and a task's id
    `index` (a key and its value, kept `index_ttl_ms`; only where it shares the queue's
    node)."""
    # Every call looks for its record first, a first attempt's too: the same call may run
    # twice (redis-py sends it again on a new connection when the first one broke after
    # the server ran it), and only the record tells the second run to store nothing.
    guard = plan.guard_ms if plan is not None else 0
    if msg.dedup_key is not None:
        record, window, check = keys.dedup(msg.dedup_key), dedup_window_ms, 1
    elif index is not None and index_ttl_ms >= guard:  # written with the entry, kept as long
        record, window, check = index[0], 0, 1
    else:
        record, window, check = keys.sent(msg.id), guard, int(guard > 0)
    index_key, index_value = index if index is not None else (record, "")
    names = list(groups) if bound else []
    script_keys = [keys.stream, keys.delayed, record, keys.counters, index_key]
    for g in names:
        script_keys += [keys.retry_stream(g), keys.retry(g)]
    args: list[Any] = [msg.id, window, check, msg.delay_ms, bound]  # delay: on the server's clock
    args += [index_ttl_ms if index is not None else 0, index_value, len(names), *names]
    for name, value in msg.fields.items():
        args += [name, value]
    return script_keys, args


def attempt_call(
    keys: QueueKeys,
    topic: Topic,
    msg: Outgoing,
    plan: Attempts,
    index: tuple[str, str] | None,
    dedup_window_ms: int,
    result_ttl_ms: int,
) -> tuple[list[str], list[Any]]:
    """The `send` script's call for one attempt (pass None for an `index` on another node)."""
    bound, groups = queue_bound(topic), topic.groups
    index_ttl = index_ttl_ms(result_ttl_ms, msg)
    return send_script_call(keys, msg, dedup_window_ms, bound, groups, plan, index, index_ttl)


def script_sent(reply: list[Any], msg: Outgoing, topic: str, queue: int) -> Sent | None:
    """Where the `send` script put a message (for a duplicate of a dedup key, the first
    message's id); None when the queue was full."""
    first, outcome, *entry = reply
    if outcome == -1:
        return None
    # else than a dedup key's, the record found is this id's own (its value may be the index)
    sent_id = first.decode() if msg.dedup_key is not None else msg.id
    return Sent(sent_id, topic, queue, entry[0].decode() if entry else None)


def full_message(topic: Topic) -> str:
    return (
        f"topic {topic.name!r} is full: its backlog reached its bound of {topic.max_backlog} "
        f"unfinished messages"
    )


def queue_bound(topic: Topic) -> int:
    """The most unfinished messages one queue of a bounded topic may hold (0: no bound)."""
    return -(-topic.max_backlog // topic.queues) if topic.max_backlog else 0


def check_keyed(topic: Topic, msg: Outgoing, state: str) -> None:
    """Raise QueueUnavailable for a keyed message whose queue is on a draining broker (a
    keyed message stays on its queue to keep its order; draining queues are read-only)."""
    if msg.route_key is not None and state == DRAINING:
        queue = choose_queue(topic, msg)
        raise QueueUnavailable(
            f"queue {queue} of {topic.name!r} is on broker {topic.placement[queue]!r}, which is "
            f"draining (read-only); a keyed message stays on its queue to keep its order"
        )


def is_outage(exc: BaseException) -> bool:
    """Whether a redis-py error means the server could not be reached (or is still loading
    its data): worth trying again, unlike a refused password or a full memory."""
    return isinstance(exc, redis.ConnectionError | redis.TimeoutError) and not isinstance(
        exc, redis.AuthenticationError
    )


def keyed_unavailable(topic: Topic, queue: int, reason: str) -> QueueUnavailable:
    """The error of a keyed message whose queue cannot take it now."""
    return QueueUnavailable(
        f"queue {queue} of {topic.name!r} (broker {topic.placement[queue]!r}) cannot take the "
        f"message: {reason}; a keyed message stays on its queue to keep its order"
    )


class Attempts:
    """The rules of one send's attempts: the queue each one goes to, and the pause before
    the next.

    A full queue (bounded topic): a keyless message tries the topic's other queues and
    waits (or raises TopicFull) only when every queue it may use was full; a keyed one
    waits for its own queue. `room` is how long it may wait for room (None: not at all).

    A broker that cannot be reached: a keyless message moves at once to a queue on another
    usable broker not yet tried; otherwise the send tries the same queue again, with
    backoff, until `outage` seconds have passed (a keyed message always stays on its
    queue). Every attempt stores a record of the message id with the entry (kept
    `guard_ms`, in the script that writes the entry; a task's id index where it is kept as
    long), and every attempt looks for it first (the `send` script), so that an attempt
    that runs again after its reply was lost (retried here or by redis-py) stores nothing.
    """

    def __init__(
        self,
        topic: Topic,
        msg: Outgoing,
        usable: Callable[[str], bool],
        *,
        room: float | None,
        outage: float,
    ) -> None:
        self.topic = topic
        self.msg = msg
        self.usable = usable
        self.keyed = msg.route_key is not None
        self.queue = choose_queue(topic, msg, usable)
        start = time.monotonic()
        self.room_until = None if room is None else start + room
        self.outage_until = start + outage
        self.guard_ms = int((max(outage, 0.0) + GUARD_SLACK) * 1000)
        self.full: set[int] = set()
        self.failed: set[str] = set()
        self._pause = 0.0

    def renew(self, topic: Topic) -> Topic:
        """Go on with a newer record of the topic (its groups decide its queues' room)."""
        if topic.queues != self.topic.queues or topic.placement != self.topic.placement:
            self.queue = choose_queue(topic, self.msg, self.usable)
        self.topic = topic
        return topic

    @property
    def broker(self) -> str:
        """The broker of the queue the next attempt goes to."""
        return self.topic.placement[self.queue]

    def when_full(self) -> float:
        """The queue was full: move to a queue with room (pause 0), or return the pause
        before trying again; raises TopicFull when the send may wait no longer."""
        self.full.add(self.queue)
        if not self.keyed:
            other = self._other_queue(lambda q: q not in self.full)
            if other is not None:
                self.queue = other
                return 0.0
        if self.room_until is None or time.monotonic() >= self.room_until:
            raise TopicFull(full_message(self.topic))
        self.full.clear()
        return self._backoff(ROOM_PAUSE, self.room_until)

    def when_unreachable(self, error: RedisMQError) -> float:
        """The queue's broker could not be reached: the pause before the next attempt
        (0: another broker at once); raises `error` (for a keyed message, QueueUnavailable)
        once the send may wait no longer."""
        self.failed.add(self.broker)
        if not self.keyed:
            other = self._other_queue(lambda q: self.topic.placement[q] not in self.failed)
            if other is not None:
                self.queue = other
                return 0.0
        if time.monotonic() >= self.outage_until:
            if self.keyed:
                raise keyed_unavailable(self.topic, self.queue, str(error)) from None
            raise error
        return self._backoff(OUTAGE_PAUSE, self.outage_until)

    def _other_queue(self, allowed: Callable[[int], bool]) -> int | None:
        """The next queue after the current one (round-robin order) that is `allowed` and
        on a usable broker, or None."""
        n = self.topic.queues
        for step in range(1, n):
            q = (self.queue + step) % n
            if allowed(q) and self.usable(self.topic.placement[q]):
                return q
        return None

    def _backoff(self, pauses: tuple[float, float], until: float) -> float:
        first, most = pauses
        self._pause = first if not self._pause else min(most, self._pause * 2)
        return max(0.0, min(self._pause, until - time.monotonic()))


__all__ = ["Attempts", "Outgoing", "Sent", "prepare_message"]
