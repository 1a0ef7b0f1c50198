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
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from .consumer import Consumer, Settling, backoff_delay
from .errors import BrokerUnavailable
from .message import Message

if TYPE_CHECKING:
    from .routing import Broker

log = logging.getLogger("redismq.ordered")


class OrderedConsumer(Consumer):
    """A consumer that reads only the queues it holds the lease of.

    Call `rebalance()` regularly (the worker does, every third of the visibility timeout):
    it renews held leases, takes free ones up to a fair share and gives back extra ones.
    A failed message is retried in place (`retry()` returns "hold"), so it holds its queue
    until it succeeds or is dead-lettered. A queue changes hands only once its holder has
    settled or released every message it fetched from it.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lease_ms = int(self.visibility_timeout * 1000)
        self.leased: set[int] = set()
        self._retiring: set[int] = set()
        self._backlog: list[Message] = []
        # Per queue, the messages fetched from it (kept in the backlog or handed out) and
        # not yet settled or released, by entry id: the queue is given back only when none.
        self._fetched: dict[int, dict[str, Message]] = defaultdict(dict)
        self._lock = threading.Lock()
        share = ",".join(str(q) for q in sorted(self.queues))
        self.members_key = self.client.router.keys.members(self.topic.name, self.group, share)
        self._set_streams()

    def _set_streams(self) -> None:
        """Read the leased queues, except those being given back: each one's stream and the
        group's retry stream of it, the retry stream first (retries happen in place; what
        comes there is a replayed dead letter, which runs before the queue's next message)."""
        streams: dict[Any, dict[str, str]] = {}
        for i in sorted(self.leased - self._retiring):
            q = self.queues[i]
            read = streams.setdefault(q.broker, {})
            read[q.keys.retry_stream(self.group)] = ">"
        for i in sorted(self.leased - self._retiring):
            q = self.queues[i]
            streams[q.broker][q.keys.stream] = ">"
        self._streams = streams
        self._rotation = itertools.cycle(list(streams))

    # -- leases ----------------------------------------------------------------------
    def rebalance(self) -> None:
        """Renew held leases, take free ones up to a fair share, and mark extra ones to be
        given back: they are read no more, and the fetching thread gives each back once
        every message it fetched from it is settled or released.

        The leases are renewed first, on their brokers: with the meta Redis down (where
        the share is counted) they are still renewed, and nothing is taken or given."""
        with self.errors():
            held = {q for q in self.leased if self._lease("renew", q)}
        try:
            with self.errors():
                fair = math.ceil(len(self.queues) / self._members())
                retiring = set(sorted(held, reverse=True)[: max(0, len(held) - fair)])
                taken = self._take_free(held, fair)
                backlog = [m for q in taken for m in self._take_over(q)]
        except BrokerUnavailable:
            self._hold(held, self._retiring & held, [])
            raise
        self._hold(held | set(taken), retiring, backlog)

    def _members(self) -> int:
        """How many consumers of the group share its queues (this one counted in)."""
        meta = self.client.meta
        now = time.time()
        pipe = meta.pipeline(transaction=False)
        pipe.zadd(self.members_key, {self.name: now})
        pipe.zremrangebyscore(self.members_key, "-inf", now - 3 * self.visibility_timeout)
        pipe.zcard(self.members_key)
        return max(1, pipe.execute()[-1])

    def _take_free(self, held: set[int], fair: int) -> list[int]:
        """Take the leases of free queues, in random order, up to a fair share."""
        free = [q for q in self.queues if q not in held]
        random.shuffle(free)
        taken: list[int] = []
        for q in free:
            if len(held) + len(taken) >= fair:
                break
            if self._lease("take", q):
                taken.append(q)
        return taken

    def _hold(self, held: set[int], retiring: set[int], backlog: list[Message]) -> None:
        """Read these queues from now on (under the lock); forget what was fetched from
        those whose lease was lost."""
        with self._lock:
            lost = self.leased - held
            if lost:
                log.warning("lost the lease of queue(s) %s of %s", sorted(lost), self.topic.name)
                # Their next holder took over what this consumer fetched and did not start.
                self._backlog = [m for m in self._backlog if m.queue not in lost]
                for q in lost:
                    self._fetched.pop(q, None)
            self.leased = held
            self._retiring = retiring
            self._owned_again(backlog)  # taken over by this consumer: its own again
            self._backlog += backlog
            self._track(backlog)
            self._set_streams()

    def _give_back(self) -> None:
        """Give back the leases marked extra of which nothing fetched is left unsettled
        (called by the fetching thread, between reads, under the lock)."""
        retiring = self._retiring & self.leased
        if not retiring:
            return
        with self.errors():
            for q in retiring:
                if self._fetched.get(q):
                    self._forget_gone(q)
            done = {q for q in retiring if not self._fetched.get(q)}
            for q in done:
                self._lease("give", q)
        self.leased -= done
        self._retiring -= done
        self._set_streams()

    def _forget_gone(self, queue: int) -> None:
        """Stop tracking fetched messages of a queue that are no longer pending here: a
        message dropped without an outcome through this consumer (its step was taken over)
        must not keep the queue from changing hands (under the lock)."""
        q = self.queues[queue]
        fetched = list(self._fetched[queue].values())
        pipe = q.broker.redis.pipeline(transaction=False)
        for m in fetched:
            stream = q.keys.retry_stream(self.group) if m.from_retry else q.keys.stream
            pipe.xpending_range(stream, self.group, m.entry_id, m.entry_id, 1, self.name)
        for m, mine in zip(fetched, pipe.execute(), strict=True):
            if not mine:
                self._fetched[queue].pop(m.entry_id, None)

    def _track(self, messages: Iterable[Message]) -> None:
        """Note messages as fetched (under the lock)."""
        for m in messages:
            self._fetched[m.queue][m.entry_id] = m

    def _untrack(self, messages: Iterable[Message]) -> None:
        """Note messages as settled or released."""
        with self._lock:
            for m in messages:
                self._fetched.get(m.queue, {}).pop(m.entry_id, None)

    def _lease(self, action: str, queue: int) -> bool:
        q = self.queues[queue]
        reply = q.broker.scripts.lease(
            keys=[q.keys.lease(self.group)], args=[action, self.name, self.lease_ms]
        )
        return bool(reply)

    def _take_over(self, queue: int) -> list[Message]:
        """Claim what earlier holders of a newly leased queue left pending, oldest first
        (the queue's own messages, then replayed ones): it runs before anything newer, so
        the queue's order holds."""
        q = self.queues[queue]
        out: list[Message] = []
        for stream in (q.keys.stream, q.keys.retry_stream(self.group)):
            start = "0-0"
            while True:
                reply = self._counted(
                    q,
                    lambda pipe, s=stream, at=start: pipe.xautoclaim(  # type: ignore[misc]
                        s, self.group, self.name, 0, at, count=100
                    ),
                )
                entries = [(eid, f) for eid, f in reply[1] if eid is not None]
                if entries:
                    out += self._count_crashes(q.broker, stream.encode(), entries)
                start = reply[0]
                if start in (b"0-0", "0-0") or not entries:
                    break
        return out

    # -- receiving -------------------------------------------------------------------
    def receive(
        self, count: int = 100, block: float | None = 1.0, *, settle: Settling | None = None
    ) -> list[Message]:
        """Up to `count` messages of the leased queues, in order per queue (`settle`: see
        `Fetching.receive`)."""
        if settle is not None:  # first: a queue whose last job it settles can be given back
            self.run_settling(settle)
        with self._lock:
            self._give_back()
            backlog, self._backlog = self._backlog[:count], self._backlog[count:]
            streams = self._streams
        held = self._still_held(backlog)
        if len(held) < len(backlog):  # the others are no longer fetched by this consumer
            self._untrack(m for m in backlog if self.is_lost(m))
        if held:
            return self._drop_done(held)
        if not streams:
            time.sleep(min(block or 0.0, 0.2))
            return []
        with self.errors():
            self._look_due(time.monotonic())
            messages = self._read(count, self._block_ms(block), None)
            with self._lock:
                self._track(messages)
                self._keep_extra()
            return self._drop_done(messages)

    def keep(self, messages: Sequence[Message]) -> None:
        """Keep messages delivered to this consumer and not finished for the next receive,
        ahead of anything newer of their queues (not after what a read brings first)."""
        with self._lock:
            self._backlog[:0] = messages
            self._track(messages)

    def _keep_extra(self) -> None:
        """Where the base read keeps what it brought beyond the count (`_extra`, for its
        own next receive), move that to the front of the backlog: this receive serves and
        tracks it (under the lock)."""
        extra = getattr(self, "_extra", None)
        if extra:
            self._backlog[:0] = extra
            self._track(extra)
            self._extra = []

    # -- outcomes --------------------------------------------------------------------
    def _settled(self, settling: Settling, broker: Broker, replies: Sequence[Any]) -> None:
        """Settled messages are no longer fetched (every settle passes here)."""
        batches = settling.calls[broker][1]
        super()._settled(settling, broker, replies)
        self._untrack(m for batch in batches for m in batch)

    def dead_letter(
        self, msg: Message, reason: str | BaseException, *, track: bool = False
    ) -> bool:
        """Move a message to the group's dead-letter stream with the reason; False if this
        consumer no longer owns it."""
        done = super().dead_letter(msg, reason, track=track)
        self._untrack([msg])
        return done

    def release(self, messages: Iterable[Message]) -> None:
        """Hand fetched messages over to the queue's next holder, which takes them first:
        they stay pending, and a message that never started is not counted as an attempt
        (one that was retried in place keeps the attempts it used)."""
        by_stream: dict[tuple[int, bool], list[Message]] = defaultdict(list)
        for m in messages:
            by_stream[(m.queue, m.from_retry)].append(m)
        with self.errors():
            for (index, from_retry), msgs in by_stream.items():
                q = self.queues[index]
                stream = q.keys.retry_stream(self.group) if from_retry else q.keys.stream
                args: list[Any] = [self.group, self.name]
                for m in msgs:
                    args += [m.entry_id, m.attempt]
                q.broker.scripts.handover(keys=[stream], args=args)
                self._untrack(msgs)

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
            return "dead" if self.dead_letter(msg, exc, track=track) else "lost"
        msg.hold_for = (
            delay
            if delay is not None
            else backoff_delay(self.backoff if backoff is None else backoff, msg.attempt)
        )
        msg.attempt += 1
        return "hold"

    def close(self) -> None:
        """Hand over what was fetched and not handed out, give back every lease whose
        queue has nothing running here (the next holder takes over at once; the others
        lapse after the visibility timeout) and leave the group."""
        with self._lock:
            kept, self._backlog = self._backlog, []
        self.release(kept)
        with self.errors():
            with self._lock:
                free = {q for q in self.leased if not self._fetched.get(q)}
                busy = self.leased - free
                self.leased = set()
            for q in free:
                self._lease("give", q)
            if busy:
                log.warning(
                    "closing with messages of queue(s) %s still running: their leases lapse",
                    sorted(busy),
                )
            self.client.meta.zrem(self.members_key, self.name)
        # Leave every stream of the queues where nothing is held, not only those read last.
        self._streams = {
            broker: {
                s: ">" for q in queues for s in (q.keys.stream, q.keys.retry_stream(self.group))
            }
            for broker, queues in self._by_broker(self.queues.values()).items()
        }
        super().close()
