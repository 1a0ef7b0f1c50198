"""Settling what a consumer received: done (with results), retried, dead-lettered or
handed back, each only while this consumer still owns the message (rule 13), and what it
learns when it does not."""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar, cast

from .arguments import encode_value
from .errors import ResultNotStorable
from .failures import format_traceback
from .message import Message, now_ms

if TYPE_CHECKING:
    from .client import Client
    from .consumer import _Queue
    from .routing import Broker

log = logging.getLogger("redismq.consumer")

T = TypeVar("T")
K = TypeVar("K")

NO_RESULT = object()
CANCELLED = object()
MAX_BACKOFF = 3600.0
# How many lost leases a consumer remembers (to warn once per message).
LOST_MEMORY = 10_000


def backoff_delay(backoff: float, attempt: int) -> float:
    """Exponential backoff with jitter: between half and all of backoff·2^attempt, capped."""
    return min(MAX_BACKOFF, backoff * 2.0 ** min(attempt, 64)) * random.uniform(0.5, 1.0)


def describe(exc: BaseException) -> str:
    """`Type: message` of an exception, on one line (valid UTF-8: see `storable_text`)."""
    text = storable_text(str(exc).replace("\n", " ").strip())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def storable_text(text: str) -> str:
    """`text` with what is not valid Unicode (a lone surrogate, as in a file name from
    os.listdir) written as a backslash escape, so that it can be stored and shown."""
    try:
        text.encode()
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode()


@dataclass(slots=True)
class Settled:
    """What one `settle_many` call did: newly completed, duplicates (completed before),
    cancelled, and the messages it left alone because this consumer no longer owns them."""

    completed: int = 0
    duplicates: int = 0
    cancelled: int = 0
    lost: list[Message] = field(default_factory=list)

    def add(self, other: Settled) -> None:
        self.completed += other.completed
        self.duplicates += other.duplicates
        self.cancelled += other.cancelled
        self.lost += other.lost


Call = tuple[str, list[str], list[Any]]


@dataclass(slots=True)
class Settling:
    """A `settle_many` made ready: its script calls per broker (with, per settle call, its
    messages), until they run; then what they did. `on_settled` is told, as each broker's
    calls run, what they did and which messages they settled."""

    settled: Settled = field(default_factory=Settled)
    calls: dict[Broker, tuple[list[Call], list[list[Message]]]] = field(default_factory=dict)
    on_settled: Callable[[Settled, list[Message]], None] | None = None


def spend_takeovers(items: Sequence[tuple[Message, Any]]) -> int | str:
    """The count of takeovers the messages were all read with ('' when their counts differ
    or one was not read by the read script: the settle then looks at what the consumer
    holds). Not the lowest of the counts: a group made again starts its count anew.

    A count serves a message's first settle only: a later one (its reply was lost and it
    is made again beside other messages, or it is settled twice) searches, since the
    settle's all-or-nothing XACK holds only for one call sent again as it was."""
    seen = {m.takeovers for m, _ in items}
    for m, _ in items:
        m.takeovers = None
    return "" if len(seen) != 1 or None in seen else cast(int, seen.pop())


def grouped(items: Iterable[T], key: Callable[[T], K]) -> dict[K, list[T]]:
    """The items in lists by their key, in their order."""
    groups: dict[K, list[T]] = defaultdict(list)
    for item in items:
        groups[key(item)].append(item)
    return groups


class Outcomes:
    """The outcome side of a Consumer: it provides the queues, group, name, client, retry
    options and `errors()`; this keeps what it learned about lost leases."""

    client: Client
    group: str
    name: str
    queues: dict[int, _Queue]
    max_retries: int
    backoff: float
    _next_move: float

    def _init_outcomes(self) -> None:
        self._lost: dict[tuple[int, bool, str], None] = {}
        self._lost_lock = threading.Lock()

    def errors(self) -> Any:  # provided by Consumer
        raise NotImplementedError

    @staticmethod
    def _by_broker(queues: Iterable[_Queue]) -> dict[Broker, list[_Queue]]:
        return grouped(queues, lambda q: q.broker)

    # -- outcomes --------------------------------------------------------------------
    def ack(self, msg: Message, result: Any = NO_RESULT) -> None:
        """Acknowledge a message as done (and store its result, if one is given)."""
        self.ack_many([msg], None if result is NO_RESULT else [result])

    def ack_many(self, messages: Sequence[Message], results: Sequence[Any] | None = None) -> int:
        """Acknowledge messages as done with one script call per queue.

        `results`, if given, holds one result per message: NO_RESULT for none, CANCELLED for
        a cancelled job (acknowledged and recorded done, so that it never runs).
        Returns how many were newly completed (the rest were duplicates, or messages this
        consumer no longer owns: those are left to their new owner, see `settle_many`).
        """
        return self.settle_many(messages, results).completed

    def settle_many(
        self, messages: Sequence[Message], results: Sequence[Any] | None = None
    ) -> Settled:
        """`ack_many`, telling what happened: completed, duplicates, cancelled, and the
        messages left alone because their lease was taken over (logged `lease lost`)."""
        return self.run_settling(self.settling(messages, results))

    def settling(
        self,
        messages: Sequence[Message],
        results: Sequence[Any] | None = None,
        on_settled: Callable[[Settled, list[Message]], None] | None = None,
    ) -> Settling:
        """`settle_many`'s script calls made ready, not run: `run_settling` runs them, or
        `receive(settle=...)` in the round trip of its read (see `Settling` for
        `on_settled`). A result that cannot be stored fails its job at once."""
        settling = Settling(on_settled=on_settled)
        if not messages:
            return settling
        stored = results or [NO_RESULT] * len(messages)
        by_queue: dict[int, list[tuple[Message, Encoded]]] = defaultdict(list)
        unstorable: list[tuple[Message, ResultNotStorable]] = []
        for m, r in zip(messages, stored, strict=True):
            try:
                by_queue[m.queue].append(
                    (m, r if isinstance(r, Encoded) else encode_outcome(r, m.id))
                )
            except ResultNotStorable as exc:
                unstorable.append((m, exc))
        for m, error in unstorable:  # fails alone: the others settle
            log.warning("job %s failed: %s", m.id, error)
            if self.retry(m, error, track=True) == "lost":
                settling.settled.lost.append(m)
        for broker, queues in self._by_broker(self.queues[i] for i in by_queue).items():
            calls = [("settle", *self._settle_call(q, by_queue[q.index])) for q in queues]
            calls += self._finish_steps(queues, by_queue)
            settling.calls[broker] = (calls, [[m for m, _ in by_queue[q.index]] for q in queues])
        return settling

    def run_settling(self, settling: Settling) -> Settled:
        """Run the calls of `settling` not run yet (one round trip per broker)."""
        with self.errors():
            for broker in list(settling.calls):
                self._settled(settling, broker, broker.scripts.run(settling.calls[broker][0]))
        return settling.settled

    def _settled(self, settling: Settling, broker: Broker, replies: Sequence[Any]) -> None:
        """Count what the calls of `broker` did (`replies`: theirs, in order, none an
        error: a failed settle stays in `settling`, to do)."""
        batches = settling.calls.pop(broker)[1]
        now = Settled()
        for batch, reply in zip(batches, replies, strict=False):
            now.completed += reply[0]
            now.duplicates += reply[1]
            now.cancelled += reply[2]
            now.lost += [batch[int(n) - 1] for n in reply[3]]
        settling.settled.add(now)
        self.lease_lost(now.lost)
        if settling.on_settled is not None:
            settling.on_settled(now, [m for batch in batches for m in batch])

    def _finish_steps(
        self, queues: list[_Queue], by_queue: dict[int, list[tuple[Message, Any]]]
    ) -> list[Call]:
        """Calls that give the step marks of finished messages the done window (marks exist
        only for messages that ran before, or whose run made them)."""
        calls: list[Call] = []
        for q in queues:
            keys = [
                q.keys.steps(self.group, m.id)
                for m, _ in by_queue[q.index]
                if m.stepped or m.attempt or m.from_retry
            ]
            if keys:
                calls.append(("step", keys, ["finish", self.client.done_ttl_ms]))
        return calls

    def _settle_call(
        self, q: _Queue, items: list[tuple[Message, Encoded]]
    ) -> tuple[list[str], list[Any]]:
        k = q.keys
        keys = [k.stream, k.retry_stream(self.group), k.done(self.group), k.stats(self.group)]
        keys += [k.cancelled, k.waiting]
        args: list[Any] = [self.group, self.name]
        args += [self.client.done_ttl_ms, self.client.result_ttl_ms, spend_takeovers(items)]
        for m, encoded in items:
            if encoded and encoded != b"~":
                keys += [k.outcome(m.id), k.job(m.id)]
            args += [m.id, m.entry_id, 1 if m.from_retry else 0, encoded]
        keys += [k.takeovers(self.group), k.running(self.group)]
        return keys, args

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
        """Schedule another attempt after a backoff, or dead-letter when attempts are spent.

        Returns "retry", "dead", or "lost" when this consumer no longer owns the message
        (another consumer took it over: nothing changed). `track` records the failure in
        the job's status. An exception's traceback is stored with the job (and the dead
        letter).
        """
        error = storable_text(exc) if isinstance(exc, str) else describe(exc)
        limit = self.max_retries if max_retries is None else max_retries
        if msg.attempt >= limit:
            return "dead" if self.dead_letter(msg, exc, track=track) else "lost"
        tb = "" if isinstance(exc, str) else format_traceback(exc)
        wait = backoff_delay(self.backoff if backoff is None else backoff, msg.attempt)
        wait_ms = int((wait if delay is None else delay) * 1000)  # from now, server time
        q = self.queues[msg.queue]
        k = q.keys
        src = k.retry_stream(self.group) if msg.from_retry else k.stream
        args: list[Any] = [self.group, self.name, msg.entry_id, int(msg.from_retry), wait_ms]
        args += [int(track), self.client.result_ttl_ms, job_error(error, tb, msg.attempt + 1)]
        for name, value in msg.fields(attempt=msg.attempt + 1).items():
            args += [name, value]
        with self.errors():
            scheduled = q.broker.scripts.retry(
                keys=[
                    src,
                    k.retry(self.group),
                    k.stats(self.group),
                    k.job(msg.id),
                    k.takeovers(self.group),
                ],
                args=args,
            )
        if not scheduled:
            self.lease_lost([msg])
            return "lost"
        self._next_move = min(self._next_move, time.monotonic() + wait_ms / 1000)
        return "retry"

    def dead_letter(
        self, msg: Message, reason: str | BaseException, *, track: bool = False
    ) -> bool:
        """Move a message to the group's dead-letter stream with the reason (and, for an
        exception, its traceback).

        Returns False (and changes nothing) if this consumer no longer owns the message. A
        message the group completed already (through another entry of it) is acknowledged
        as a duplicate instead: it never ends both done and dead.
        """
        text = storable_text(reason) if isinstance(reason, str) else describe(reason)
        tb = "" if isinstance(reason, str) else format_traceback(reason)
        q = self.queues[msg.queue]
        fields = msg.fields()
        with self.errors():
            done = self._dead(
                q,
                msg.from_retry,
                msg.entry_id,
                fields,
                text,
                msg.attempt,
                msg.id if track else None,
                tb,
                msg.id,
            )
        if not done:
            self.lease_lost([msg])
        return done

    def _dead(
        self,
        q: _Queue,
        from_retry: bool,
        entry_id: str,
        fields: dict,
        reason: str,
        attempt: int,
        track: str | None,
        traceback: str = "",
        message_id: str = "",
    ) -> bool:
        """Dead-letter one entry this consumer owns (or acknowledge it, if the group completed
        its message already); False if it does not own it."""
        k = q.keys
        src = k.retry_stream(self.group) if from_retry else k.stream
        job_id = track or "-"
        args: list[Any] = [self.group, self.name, entry_id, int(from_retry)]
        args += [int(track is not None)]
        args += [self.client.result_ttl_ms, job_error(reason, traceback, attempt + 1)]
        args.append(message_id)
        for name, value in fields.items():
            args += [name, value]
        args += ["dead_reason", reason, "dead_at", now_ms(), "dead_attempts", attempt + 1]
        args += ["dead_entry", entry_id]
        if traceback:
            args += ["dead_traceback", traceback]
        reply = q.broker.scripts.dead(
            keys=[
                src,
                k.dead(self.group),
                k.stats(self.group),
                k.job(job_id),
                k.outcome(job_id),
                k.done(self.group),
                k.takeovers(self.group),
            ],
            args=args,
        )
        if reply == 2:
            log.info("%s was completed already: acknowledged, not dead-lettered", message_id)
        return bool(reply)

    def release(self, messages: Iterable[Message]) -> None:
        """Hand fetched but unstarted messages back to the group, for another consumer now.

        Messages this consumer no longer owns are left to their new owner.
        """
        calls: dict[Broker, list] = defaultdict(list)
        released: dict[Broker, list[Message]] = defaultdict(list)
        for m in messages:
            q = self.queues[m.queue]
            k = q.keys
            src = k.retry_stream(self.group) if m.from_retry else k.stream
            args: list[Any] = [self.group, self.name, m.entry_id, int(m.from_retry)]
            for name, value in m.fields().items():
                args += [name, value]
            keys = [src, k.retry_stream(self.group), k.takeovers(self.group)]
            calls[q.broker].append(("release", keys, args))
            released[q.broker].append(m)
        lost: list[Message] = []
        with self.errors():
            for broker, batch in calls.items():
                replies = broker.scripts.run(batch)
                lost += [m for m, ok in zip(released[broker], replies, strict=True) if not ok]
        self.lease_lost(lost)

    # -- lost leases -----------------------------------------------------------------
    def lease_lost(self, messages: Iterable[Message]) -> None:
        """Note messages this consumer no longer owns (another consumer took them over):
        each is logged `lease lost` once, and `is_lost` then tells not to start it."""
        with self._lost_lock:
            for m in messages:
                key = (m.queue, m.from_retry, m.entry_id)
                if key in self._lost:
                    continue
                log.warning("lease lost: %s is now another consumer's (%s)", m.id, self)
                self._lost[key] = None
                while len(self._lost) > LOST_MEMORY:
                    del self._lost[next(iter(self._lost))]

    def _owned_again(self, messages: Iterable[Message]) -> None:
        with self._lost_lock:
            for m in messages:
                self._lost.pop((m.queue, m.from_retry, m.entry_id), None)

    def is_lost(self, msg: Message) -> bool:
        """Whether this consumer learned that it no longer owns the message."""
        return (msg.queue, msg.from_retry, msg.entry_id) in self._lost


class Encoded(bytes):
    """A result as the settle script takes it (see `encode_outcome`)."""


_NOTHING, _CANCELLED, _NONE = Encoded(b""), Encoded(b"~"), Encoded(b"N")


def encode_outcome(result: Any, job_id: str = "") -> Encoded:
    """What the settle script stores for a result: b'' for none (NO_RESULT), b'~' for a
    cancelled job, b'N' for None, else the done outcome as UTF-8 JSON.

    Raises ResultNotStorable for a result that cannot be stored.
    """
    if result is NO_RESULT:
        return _NOTHING
    if result is CANCELLED:
        return _CANCELLED
    if result is None:
        return _NONE
    try:
        return Encoded(f'{{"status":"done","result":{encode_result(result, job_id)}}}'.encode())
    except UnicodeEncodeError:
        raise ResultNotStorable(
            "the task's result cannot be stored: it holds text that is not valid Unicode "
            "(a lone surrogate, as in a file name from os.listdir; decode such names with "
            "errors='replace' or return bytes as text another way)"
        ) from None
    except RecursionError:
        raise ResultNotStorable(
            "the task's result cannot be stored: it is nested too deeply for JSON"
        ) from None


def encode_result(result: Any, job_id: str = "") -> str:
    """A task's return value as JSON text: datetime, date, time, UUID and Decimal in the
    tagged form task arguments use (`Job.result` gives them back as such); any other part
    JSON cannot carry as its repr, with a warning (the job ran: it is not run again)."""
    try:
        return json.dumps(result, separators=(",", ":"), ensure_ascii=False)
    except (TypeError, ValueError):
        pass
    replaced: list[str] = []

    def as_repr(value: Any, where: str, key: bool) -> str:
        if key and isinstance(value, int | float | None):
            return json.dumps(value)  # a key JSON writes as text: as json.dumps does
        replaced.append(f"{where}{': a dict key' if key else ''} ({type(value).__name__})")
        return repr(value)

    try:
        form = encode_value(result, "the result", as_repr)
    except RecursionError:  # it holds itself (or is nested too deeply)
        form, replaced = repr(result), ["the result (circular)"]
    text = json.dumps(form, separators=(",", ":"), ensure_ascii=False)
    if replaced:
        log.warning(
            "job %s: its result holds what JSON cannot carry, stored as its repr: %s",
            job_id or "?",
            ", ".join(replaced),
        )
    return text


def job_error(error: str, traceback: str = "", attempt: int = 0) -> str:
    """The error stored with a job: its type, message, when (ms), (if known) traceback and
    the number of the attempt that failed, as JSON."""
    kind, _, text = error.partition(": ")
    record: dict[str, Any] = {"type": kind, "message": text, "at": now_ms()}
    if attempt:
        record["attempt"] = attempt
    if traceback:
        record["traceback"] = traceback
    return json.dumps(record)
