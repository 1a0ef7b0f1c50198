"""The rules of one `send_many`, shared by `Client` and `AsyncClient`: the checked messages,
which of them go in which call to which broker, and what a part whose broker could not be
reached does next. Both clients do only the I/O."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple, Protocol, cast

import redis

from .errors import NotReplicated, RedisMQError
from .keys import QueueKeys
from .message import DEFAULT_MAX_BODY, encode_body, entry_fields, new_message_ids, now_ms
from .redis_errors import converted
from .routing import Topic
from .sending import GUARD_SLACK, OUTAGE_PAUSE, Outgoing, Sent, index_entry, is_outage
from .validation import check_headers

# Messages per call of the `send_batch` script: the server runs nothing else meanwhile.
BATCH_CALL = 500

Call = tuple[list[str], list[Any]]


def prepare_batch(
    bodies: Iterable[Any],
    headers: dict[str, str] | None,
    max_body: int = DEFAULT_MAX_BODY,
    index_as: tuple[str, str] | None = None,
) -> list[Outgoing]:
    """Check and encode many messages (no key, delay or dedup) sharing headers; with
    `index_as` (group, task), tasks' messages, each indexed by its id."""
    check_headers(headers)
    encoded = [encode_body(body, max_body) for body in bodies]
    created = now_ms()
    return [
        Outgoing(
            mid,
            entry_fields(mid, data, raw, headers=headers, created=created),
            index_as=index_as,
        )
        for mid, (data, raw) in zip(new_message_ids(len(encoded)), encoded, strict=True)
    ]


class Part(NamedTuple):
    """The messages of a batch that go to one broker (on a Redis Cluster, to one hash tag)
    in one pipeline: their positions in the batch, the `send_batch` script's calls, and the
    id indexes of tasks' messages written before them (on a Redis Cluster, where an index
    lives on another slot; elsewhere the calls write them)."""

    broker: str
    indexes: list[int]
    calls: list[Call]
    late_indexes: list[tuple[str, str]]

    @property
    def key(self) -> str:
        """A stream key of the part (on a Redis Cluster, its slot's)."""
        return self.calls[0][0][1]


class Routes(Protocol):
    """What a batch needs of a client's router (sync or async)."""

    namespace: str

    def queue_keys(self, topic: str, queue: int) -> QueueKeys: ...

    def usable(self, name: str) -> bool: ...


class BatchSend:
    """One send of plain messages round-robin over a topic's queues on usable brokers, in
    one pipeline of `send_batch` calls per broker (on a Redis Cluster, per hash tag).

    A part whose broker could not be reached moves at once to the queues of the topic's
    other usable brokers, as a keyless send does. With none left, it is sent again as it
    was, with backoff, until `outage` seconds have passed: each call's record (named by its
    first message, kept for the deadline and GUARD_SLACK) makes a copy of a call that the
    server ran already return what it stored. Another error, or a deadline passed, is the
    part's failure: once every part had its chance, `result` raises the first failure with
    `sent`, None for each message not known stored.

    Use: `parts()` to send, `stored` or `failed` for each, `pause()` until it returns None,
    sleeping that long in between, then `result()`. A part's `late_indexes` are written
    (each kept `index_ttl_ms`) before its calls: when that fails, nothing of the part is
    stored, and it may move to another broker.
    """

    def __init__(
        self,
        topic: Topic,
        msgs: list[Outgoing],
        routes: Routes,
        *,
        outage: float,
        replica_timeout_ms: int | None,
        index_ttl_ms: int = 0,
    ) -> None:
        self.topic = topic
        self.index_ttl_ms = index_ttl_ms
        self.msgs = msgs
        self.routes = routes
        self.wait_ms = -1 if replica_timeout_ms is None else replica_timeout_ms
        self.guard_ms = int((max(outage, 0.0) + GUARD_SLACK) * 1000)
        self.outage_until = time.monotonic() + outage
        self.queues = [0] * len(msgs)
        self.entries: list[str | None] = [None] * len(msgs)
        self.failures: list[BaseException] = []
        self.away: set[str] = set()
        self.waiting: list[tuple[Part, BaseException]] = []
        self._pause = 0.0
        self.todo = self._place(list(range(len(msgs))), routes.usable)

    def _keys(self, queue: int) -> QueueKeys:
        return self.routes.queue_keys(self.topic.name, queue)

    def parts(self) -> list[Part]:
        """The parts to send now."""
        todo, self.todo = self.todo, []
        return todo

    def stored(self, part: Part, replies: list[Any]) -> None:
        """A part's pipeline replied: its calls' entry ids, then WAIT's count if asked."""
        acked = replies.pop() if self.wait_ms >= 0 else 1
        entries = [entry for reply in replies for entry in reply]
        for i, entry in zip(part.indexes, entries, strict=True):
            self.entries[i] = entry.decode()
        if acked < 1:
            first = self.msgs[part.indexes[0]].id
            self.failures.append(NotReplicated(first, part.broker, self.wait_ms))

    def failed(
        self, part: Part, exc: redis.RedisError, url: str, mark_down: Callable[[str], None]
    ) -> None:
        """A part's pipeline raised `exc` (the broker at `url`): move it, keep it to send
        again, or record the failure."""
        error = converted(url, exc)
        if not is_outage(exc):
            self.failures.append(error)
            return
        mark_down(part.broker)
        self.away.add(part.broker)
        if any(self._open(b) for b in set(self.topic.placement)):
            self.todo += self._place(part.indexes, self._open)
        else:
            self.waiting.append((part, error))

    def pause(self) -> float | None:
        """After the parts were sent: how long to wait before the next `parts()` (None:
        the batch is done)."""
        if self.todo:
            return 0.0
        if not self.waiting:
            return None
        if time.monotonic() >= self.outage_until:
            self.failures += [error for _, error in self.waiting]
            self.waiting = []
            return None
        self.todo, self.waiting = [part for part, _ in self.waiting], []
        first, most = OUTAGE_PAUSE
        self._pause = first if not self._pause else min(most, self._pause * 2)
        return max(0.0, min(self._pause, self.outage_until - time.monotonic()))

    def result(self) -> list[Sent]:
        """Where each message went, in the order given; raises the first failure."""
        return batch_sent(self.topic.name, self.msgs, self.queues, self.entries, self.failures)

    def _open(self, broker: str) -> bool:
        return broker not in self.away and self.routes.usable(broker)

    def _place(self, indexes: list[int], usable: Callable[[str], bool]) -> list[Part]:
        """Queues for the messages at `indexes`, and the parts that send them."""
        groups: dict[tuple[str, str | None], list[int]] = {}
        for i, q in zip(indexes, self.topic.next_queues(len(indexes), usable), strict=True):
            self.queues[i] = q
            # only queues on a Redis Cluster broker have a shard (a hash tag)
            groups.setdefault((self.topic.placement[q], self.topic.shards.get(q)), []).append(i)
        parts = []
        for (broker, shard), part in groups.items():
            entries = [self._index(i) for i in part]
            if shard is None:  # the calls write the indexes
                parts.append(Part(broker, part, self._calls(part, entries), []))
            else:  # on a Redis Cluster an index (keyed by the id alone) is on another slot
                late = [entry for entry in entries if entry is not None]
                parts.append(Part(broker, part, self._calls(part, []), late))
        return parts

    def _index(self, i: int) -> tuple[str, str] | None:
        if not self.index_ttl_ms:  # the client keeps no results: no index, as for one send
            return None
        return index_entry(self.routes.namespace, self.topic.name, self.queues[i], self.msgs[i])

    def _calls(self, part: list[int], indexes: list[tuple[str, str] | None]) -> list[Call]:
        """The `send_batch` calls of a part, at most BATCH_CALL messages each, writing the
        `indexes` given (one per message, or none); each call's record is named by its
        first message."""
        calls = []
        stream_of = {q: self._keys(q).stream for q in {self.queues[i] for i in part}}
        indexed = any(indexes)
        for start in range(0, len(part), BATCH_CALL):
            chunk = part[start : start + BATCH_CALL]
            first = chunk[0]
            keys = [self._keys(self.queues[first]).sent(self.msgs[first].id)]
            args: list[Any] = [self.guard_ms, self.index_ttl_ms if indexed else 0]
            position: dict[str, int] = {}
            for n, i in enumerate(chunk, start):
                stream = stream_of[self.queues[i]]
                at = position.get(stream)
                if at is None:
                    keys.append(stream)
                    at = position[stream] = len(keys)
                args.append(at)
                if indexed:
                    index_key, index_value = cast(tuple[str, str], indexes[n])
                    keys.append(index_key)
                    args += [len(keys), index_value]
                fields = self.msgs[i].fields
                args.append(len(fields))
                for name, value in fields.items():
                    args += [name, value]
            calls.append((keys, args))
        return calls


def stopped_at(exc: RedisMQError, sent: list[Sent], total: int) -> RedisMQError:
    """The error that stopped a batch sent one by one after `sent`: its `sent` gives where
    those went, None for the `total - len(sent)` messages after them."""
    exc.sent = [*sent, *[None] * (total - len(sent))]
    return exc


def batch_sent(
    topic: str,
    msgs: list[Outgoing],
    queues: list[int],
    entries: list[str | None],
    failures: list[BaseException],
) -> list[Sent]:
    """Where each message of a batch went, in the order they were given; raises the first
    of `failures` with `sent`: where each went, None for a message not known stored."""
    sent = [Sent(m.id, topic, q, e) for m, q, e in zip(msgs, queues, entries, strict=True)]
    if failures:
        first = failures[0]
        if isinstance(first, RedisMQError):
            first.sent = [s if s.entry_id is not None else None for s in sent]
        raise first
    return sent
