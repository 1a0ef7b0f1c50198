"""A member of a consumer group on one topic: its set-up, its leases and its backlog.

Receiving is in redismq/fetching.py, settling outcomes in redismq/outcomes.py."""

from __future__ import annotations

import itertools
import json
import os
from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Self

from .errors import InvalidMessage
from .fetching import Fetching, pace_for
from .message import Message, now_ms
from .outcomes import (
    CANCELLED,
    MAX_BACKOFF,
    NO_RESULT,
    Encoded,
    Settled,
    Settling,
    backoff_delay,
    describe,
    encode_outcome,
    encode_result,
    job_error,
    storable_text,
)
from .process import process_id
from .redis_errors import redis_errors
from .routing import Broker, Topic
from .validation import check_topic_name

if TYPE_CHECKING:
    from .client import Client


_consumer_numbers = itertools.count(1)


def renew_interval(visibility_timeout: float) -> float:
    """How often a worker renews the leases it holds."""
    return max(0.05, min(5.0, visibility_timeout / 3))


def consumer_name() -> str:
    """A consumer name unique on this host: `host:pid:n`."""
    return f"{process_id()}:{next(_consumer_numbers)}"


@dataclass(slots=True)
class Renewal:
    """One renew script call (the leases a consumer holds on one stream) and its messages."""

    broker: Broker
    call: tuple[str, list[str], list[Any]]
    messages: list[Message]

    def lost(self, reply: list[bytes]) -> list[Message]:
        """The messages the script reported as no longer held."""
        gone = {i.decode() for i in reply}
        return [m for m in self.messages if m.entry_id in gone]


@dataclass(slots=True)
class _Queue:
    """One queue as this consumer sees it: its keys and its broker."""

    index: int
    keys: Any
    broker: Broker


class Consumer(Fetching):
    """A member of a consumer group that reads every queue of one topic (or the `queues`
    given, e.g. those of one broker).

    Received messages stay pending (leased to this consumer) until they are acknowledged,
    retried, dead-lettered or released; `renew()` keeps their leases fresh while they run.
    """

    def __init__(
        self,
        client: Client,
        topic: Topic,
        group: str,
        *,
        visibility_timeout: float = 30.0,
        max_retries: int = 3,
        backoff: float = 1.0,
        name: str | None = None,
        queues: Iterable[int] | None = None,
    ) -> None:
        check_topic_name(group)
        if visibility_timeout <= 0:
            raise InvalidMessage("visibility_timeout must be positive")
        self.client = client
        self.topic = topic
        self.group = group
        self.name = name or consumer_name()
        self.visibility_timeout = visibility_timeout
        self.max_retries = max_retries
        self.backoff = backoff
        router = client.router
        indexes = range(topic.queues) if queues is None else sorted(set(queues))
        self.queues = {
            q: _Queue(q, router.queue_keys(topic.name, q), router.queue_broker(topic, q))
            for q in indexes
        }
        self._by_stream: dict[bytes, tuple[_Queue, bool]] = {}
        for q in self.queues.values():
            self._by_stream[q.keys.stream.encode()] = (q, False)
            self._by_stream[q.keys.retry_stream(group).encode()] = (q, True)
        # Per broker, the main streams then the retry streams: the order of their turns.
        self._streams: Mapping[Broker, Collection[str]] = {
            broker: [q.keys.stream for q in queues] + [q.keys.retry_stream(group) for q in queues]
            for broker, queues in self._by_broker(self.queues.values()).items()
        }
        # Fetched by a blocking read beyond what was asked: handed out by the next receive.
        self._extra: list[Message] = []
        self._waited_empty = False
        self._read_keys_of: dict[tuple[str, ...], list[str]] = {}  # see Fetching._read_keys
        self._rotation = itertools.cycle(list(self._streams))
        self._claim_every = max(0.05, min(visibility_timeout / 4, 5.0))
        streams = [s for group_streams in self._streams.values() for s in group_streams]
        self._pace = pace_for(client, group, streams, self._claim_every)
        self._confirm_after = renew_interval(visibility_timeout) + 0.5
        self._init_outcomes()
        # Whether receive records the jobs it returns as running (task subscriptions).
        self.marks_running = False
        urls = {q.broker.url for q in self.queues.values()}
        self._errors_url = (urls.pop() if len(urls) == 1 else None) or client.url
        with self.errors():
            self._create_groups()

    def errors(self) -> Any:
        """Context in which redis-py errors become one-line RedisMQErrors naming the broker
        (the meta URL when the consumer's queues span several brokers)."""
        return redis_errors(self._errors_url)

    def __repr__(self) -> str:
        return f"Consumer(topic={self.topic.name!r}, group={self.group!r}, name={self.name!r})"

    # -- set-up ----------------------------------------------------------------------
    def _create_groups(self) -> None:
        """Create the group on every stream, starting at the oldest retained entry, and
        register this consumer in it (so that it shows while idle, on every engine). Where
        this made the group on a queue's stream, the queue's count of takeovers for it
        starts at a random number (see `QueueKeys.takeovers`)."""
        self.client.router.add_group(self.topic.name, self.group)
        for broker, streams in self._streams.items():
            pipe = broker.redis.pipeline(transaction=False)
            for stream in streams:
                pipe.xgroup_create(stream, self.group, id="0", mkstream=True)
                pipe.xgroup_createconsumer(stream, self.group, self.name)
            replies = pipe.execute(raise_on_error=False)
            for reply in replies:
                if isinstance(reply, Exception) and "BUSYGROUP" not in str(reply):
                    raise reply
            made = [
                s
                for s, r in zip(streams, replies[::2], strict=True)
                if not isinstance(r, Exception)
            ]
            self._start_counts(broker, made)

    def _start_counts(self, broker: Broker, made: list[str]) -> None:
        """Start at a random number the count of takeovers of the queues whose stream got
        the group just now (whatever a takeover tried while the group was gone left)."""
        queues = [
            q for q, from_retry in (self._by_stream[s.encode()] for s in made) if not from_retry
        ]
        if not queues:
            return
        pipe = broker.redis.pipeline(transaction=False)
        for q in queues:
            pipe.set(q.keys.takeovers(self.group), int.from_bytes(os.urandom(6), "big"))
        pipe.execute()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Leave the group: remove this consumer from every stream where it holds nothing.

        (A consumer that still holds messages stays, so that they can be taken over.)
        Messages fetched and not yet handed out are handed back first. `Client.close()`
        closes the consumers not closed yet; so does leaving a `with` block.
        """
        self.client.open_consumers.discard(self)
        with self.errors():
            kept, self._extra = self._extra, []
            self.release(kept)
            for broker, streams in self._streams.items():
                for stream in streams:
                    mine = broker.redis.xpending_range(
                        stream, self.group, "-", "+", 1, consumername=self.name
                    )
                    if not mine:
                        broker.redis.xgroup_delconsumer(stream, self.group, self.name)

    def renew(self, messages: Iterable[Message]) -> list[Message]:
        """Reset the lease of messages this consumer holds, and the effect-once step claims
        their runs hold; returns the messages it no longer holds. One round trip per
        broker."""
        by_broker: dict[Broker, list[Renewal]] = defaultdict(list)
        for renewal in self.renewals(messages):
            by_broker[renewal.broker].append(renewal)
        lost: list[Message] = []
        with self.errors():
            for broker, renewals in by_broker.items():
                replies = broker.scripts.run([r.call for r in renewals])
                lost += [m for r, ids in zip(renewals, replies, strict=True) for m in r.lost(ids)]
        return lost

    def renewals(self, messages: Iterable[Message]) -> list[Renewal]:
        """The renew script calls for messages this consumer holds, one per stream."""
        by_stream: dict[tuple[int, bool], list[Message]] = defaultdict(list)
        for m in messages:
            by_stream[(m.queue, m.from_retry)].append(m)
        out = []
        for (index, from_retry), msgs in by_stream.items():
            q = self.queues[index]
            stream = q.keys.retry_stream(self.group) if from_retry else q.keys.stream
            keys = [stream] + [q.keys.steps(self.group, m.id) for m in msgs if m.stepped]
            args: list[Any] = [self.group, self.name, int(self.visibility_timeout * 1000)]
            for m in msgs:
                args += [m.entry_id, int(m.stepped)]
            out.append(Renewal(q.broker, ("renew", keys, args), msgs))
        return out

    def set_progress(self, msg: Message, fraction: float, text: str = "") -> None:
        """Store a running job's progress in its job record."""
        if not 0.0 <= fraction <= 1.0:
            raise InvalidMessage(f"progress must be between 0 and 1, not {fraction!r}")
        q = self.queues[msg.queue]
        key = q.keys.job(msg.id)
        progress = json.dumps({"fraction": fraction, "text": text, "at": now_ms()})
        with self.errors():
            pipe = q.broker.redis.pipeline(transaction=False)
            pipe.hset(key, "progress", progress)
            pipe.pexpire(key, self.client.result_ttl_ms)
            pipe.execute()

    # -- state -----------------------------------------------------------------------
    def backlog(self) -> int:
        """Messages of this group not yet finished on its queues: undelivered, pending,
        retrying or delayed (the backlog as redismq.backlog defines it), counted by the
        `backlog` script (one round trip per broker; a --burst worker's idle threads ask)."""
        total = 0
        with self.errors():
            for broker, queues in self._by_broker(self.queues.values()).items():
                calls = [
                    (
                        "backlog",
                        [q.keys.stream, q.keys.delayed]
                        + [q.keys.retry_stream(self.group), q.keys.retry(self.group)],
                        [self.group],
                    )
                    for q in queues
                ]
                total += sum(reply[1] for reply in broker.scripts.run(calls))
        return total


__all__ = [
    "CANCELLED",
    "MAX_BACKOFF",
    "Consumer",
    "NO_RESULT",
    "Encoded",
    "Settled",
    "Settling",
    "backoff_delay",
    "describe",
    "encode_outcome",
    "encode_result",
    "job_error",
    "storable_text",
]
