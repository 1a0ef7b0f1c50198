"""Ordered groups: each queue is leased to one consumer of the group at a time, which
processes it strictly in order; leases are spread evenly over the group's live consumers
and taken over when they lapse."""

from __future__ import annotations

import itertools
import logging
import math
import random
import threading
import time
from collections.abc import Iterable
from typing import Any

from .consumer import Consumer, backoff_delay
from .message import Message

log = logging.getLogger("redismq.ordered")


class OrderedConsumer(Consumer):
    """A consumer that reads only the queues it holds the lease of.

    Call `rebalance()` regularly (the worker does, every third of the visibility timeout):
    it renews held leases, takes free ones up to a fair share and gives back extra ones.
    A failed message is retried in place (`retry()` returns "hold"), so it holds its queue
    until it succeeds or is dead-lettered.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lease_ms = int(self.visibility_timeout * 1000)
        self.leased: set[int] = set()
        self._retiring: set[int] = set()
        self._backlog: list[Message] = []
        self._lock = threading.Lock()
        share = ",".join(str(q) for q in sorted(self.queues))
        self.members_key = self.client.router.keys.members(self.topic.name, self.group, share)
        self._set_streams()

    def _set_streams(self) -> None:
        """Read only the main streams of leased queues (retries happen in place)."""
        streams: dict[Any, dict[str, str]] = {}
        for i in sorted(self.leased):
            q = self.queues[i]
            streams.setdefault(q.broker, {})[q.keys.stream] = ">"
        self._streams = streams
        self._rotation = itertools.cycle(list(streams))

    # -- leases ----------------------------------------------------------------------
    def rebalance(self) -> None:
        """Renew held leases, take free ones up to a fair share, and mark extra ones to be
        given back by the fetching thread between two batches (when it holds none of their
        messages)."""
        with self.errors():
            meta = self.client.meta
            now = time.time()
            pipe = meta.pipeline(transaction=False)
            pipe.zadd(self.members_key, {self.name: now})
            pipe.zremrangebyscore(self.members_key, "-inf", now - 3 * self.visibility_timeout)
            pipe.zcard(self.members_key)
            live = max(1, pipe.execute()[-1])
            fair = math.ceil(len(self.queues) / live)
            held = {q for q in self.leased if self._lease("renew", q)}
            retiring = set(sorted(held, reverse=True)[: max(0, len(held) - fair)])
            free = [q for q in self.queues if q not in held]
            random.shuffle(free)
            taken = []
            for q in free:
                if len(held) >= fair:
                    break
                if self._lease("take", q):
                    held.add(q)
                    taken.append(q)
            backlog = [m for q in taken for m in self._take_over(q)]
        with self._lock:
            lost = self.leased - held
            if lost:
                log.warning("lost the lease of queue(s) %s of %s", sorted(lost), self.topic.name)
            self.leased = held
            self._retiring = retiring
            self._backlog += backlog
            self._set_streams()

    def _give_back(self) -> None:
        """Give back the leases marked extra (called between batches, under the lock)."""
        retiring = {q for q in self._retiring if q in self.leased}
        if not retiring:
            return
        with self.errors():
            for q in retiring:
                self._lease("give", q)
        self.leased -= retiring
        self._retiring = set()
        self._set_streams()

    def _lease(self, action: str, queue: int) -> bool:
        q = self.queues[queue]
        reply = q.broker.scripts.lease(
            keys=[q.keys.lease(self.group)], args=[action, self.name, self.lease_ms]
        )
        return bool(reply)

    def _take_over(self, queue: int) -> list[Message]:
        """Claim what earlier holders of a newly leased queue left pending, oldest first:
        it runs before anything newer, so the queue's order holds."""
        q = self.queues[queue]
        out: list[Message] = []
        start = "0-0"
        while True:
            reply = q.broker.redis.xautoclaim(
                q.keys.stream, self.group, self.name, 0, start, count=100
            )
            entries = [(eid, f) for eid, f in reply[1] if eid is not None]
            if entries:
                out += self._count_crashes(q.broker, q.keys.stream.encode(), entries)
            start = reply[0]
            if start in (b"0-0", "0-0") or not entries:
                return out

    # -- receiving -------------------------------------------------------------------
    def receive(self, count: int = 100, block: float | None = 1.0) -> list[Message]:
        """Up to `count` messages of the leased queues, in order per queue."""
        with self._lock:
            self._give_back()
            backlog, self._backlog = self._backlog[:count], self._backlog[count:]
            streams = self._streams
        if backlog:
            return self._drop_done(backlog)
        if not streams:
            time.sleep(min(block or 0.0, 0.2))
            return []
        with self.errors():
            if time.monotonic() >= self._next_move:
                self._move_due()
            return self._drop_done(self._read(count, self._block_ms(block)))

    def _excess(self, messages: list[Message]) -> None:
        """Keep what a read brought beyond the count for the next receive, in order."""
        with self._lock:
            self._backlog[:0] = messages

    def release(self, messages: Iterable[Message]) -> None:
        """Leave unstarted messages pending: the queue's next holder takes them first."""

    def retry(
        self,
        msg: Message,
        exc: BaseException | str,
        *,
        delay: float | None = None,
        max_retries: int | None = None,
        backoff: float | None = None,
        track: bool = False,
    ) -> str:
        """Retry in place: returns "hold" (run it again after `msg.hold_for` seconds,
        keeping the queue) or "dead" once its retries are spent."""
        limit = self.max_retries if max_retries is None else max_retries
        if msg.attempt >= limit:
            self.dead_letter(msg, exc, track=track)
            return "dead"
        msg.hold_for = (
            delay
            if delay is not None
            else backoff_delay(self.backoff if backoff is None else backoff, msg.attempt)
        )
        msg.attempt += 1
        return "hold"

    def close(self) -> None:
        """Give back every lease (the next holder takes over at once) and leave the group."""
        with self.errors():
            for q in list(self.leased):
                self._lease("give", q)
            self.leased = set()
            self.client.meta.zrem(self.members_key, self.name)
        super().close()
