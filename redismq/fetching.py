"""The receiving side of a consumer: take the topic's streams in turns, read never more
than asked, take over expired leases at a second look, decode entries, skip messages
already done or cancelled, and move due delayed messages and retries into view."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import weakref
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

from redis.exceptions import NoScriptError, RedisError

from . import cluster
from .errors import InvalidMessage
from .job import sweep_due
from .keys import QueueKeys, turn
from .message import Message, decode_entry, decode_flat, entry_dict, now_ms
from .outcomes import CANCELLED, NO_RESULT, Outcomes, Settling, grouped
from .retention import retire_idle_consumers
from .routing import Broker, Topic

if TYPE_CHECKING:
    from .consumer import _Queue

log = logging.getLogger("redismq.consumer")
# Sets of streams whose read keys a consumer keeps made: one per broker it reads, but an
# ordered consumer's set changes with the queues it leases.
READ_KEY_SETS = 16

MOVE_BATCH = 500
# How often due delayed messages and retries are looked for when none is known to be due
# sooner; bounds how late a message sent with a delay by another process becomes visible.
MOVE_TICK_MS = 250
MULTI_BROKER_BLOCK_MS = 100
# How often the queues a consumer reads are trimmed by their topic's retention, and their
# idle consumers retired (by one of the consumers of a client that read the same streams
# for the same group: see `Pace`).
TRIM_EVERY = 10.0
RETIRE_EVERY = 60.0
# The read script's verdict of an entry (a byte of its reply).
VERDICTS = {ord("."): "", ord("d"): "done", ord("c"): "cancelled"}


class Pace:
    """When the consumers of one client that read the same streams for the same group next
    look for due delayed messages and retries and for expired leases, and which entries the
    last look saw expired. One of them looks for all: a worker has a consumer per fetch
    thread, and at --concurrency 200 their own looks were a fifth of its Redis calls.

    Of their blocking reads, one at a time (the watcher's) is cut short for the next look;
    the others wait their whole block: a move into a stream wakes them anyway. (When each
    woke for the looks, an idle worker at --concurrency 200 made 8,500 calls a second.)"""

    def __init__(self) -> None:
        self.next_move = 0.0
        self.next_claim = 0.0
        self._born = time.monotonic()
        self._next: dict[str, float] = {}  # of the looks made every so often, by name
        # Expired entries seen by the last look, with when they were first seen expired.
        self.suspects: dict[tuple[str, bytes, int], float] = {}
        self._watcher: int | None = None  # the thread whose blocking read wakes for looks
        self._lock = threading.Lock()

    def watch(self) -> bool:
        """Whether the calling thread's blocking read is the one cut short for the next look
        (it is until it calls `unwatch`)."""
        me = threading.get_ident()
        with self._lock:
            if self._watcher is None:
                self._watcher = me
            return self._watcher == me

    def unwatch(self) -> None:
        """The calling thread's blocking read is over: another may watch."""
        with self._lock:
            if self._watcher == threading.get_ident():
                self._watcher = None

    def take_move(self, now: float) -> bool:
        """Whether the look for due messages is due; if so the caller makes it (and sets
        when the next one is due: within a tick at the latest)."""
        with self._lock:
            if now < self.next_move:
                return False
            self.next_move = now + MOVE_TICK_MS / 1000
            return True

    def take_claim(self, now: float, every: float) -> bool:
        """Whether the look for expired leases is due; if so the caller makes it."""
        with self._lock:
            if now < self.next_claim:
                return False
            self.next_claim = now + every
            return True

    def take_every(self, look: str, now: float, every: float) -> bool:
        """Whether `look`, made every `every` seconds (the first one interval after this
        pace began: nothing was consumed before), is due; if so the caller makes it."""
        with self._lock:
            if now < self._next.get(look, self._born + every):
                return False
            self._next[look] = now + every
            return True


_paces: weakref.WeakKeyDictionary[Any, dict[tuple[str, tuple[str, ...], float], Pace]]
_paces = weakref.WeakKeyDictionary()
_paces_lock = threading.Lock()


def pace_for(client: Any, group: str, streams: Iterable[str], claim_every: float) -> Pace:
    """The pace shared by the consumers of `client` that read these streams for `group`."""
    with _paces_lock:
        paces = _paces.setdefault(client, {})
        return paces.setdefault((group, tuple(streams), claim_every), Pace())


class Fetching(Outcomes):
    """How a Consumer receives messages (it sets up the streams read here); what needs no
    run (done, cancelled, undecodable) is settled here at once."""

    topic: Topic
    visibility_timeout: float
    _by_stream: dict[bytes, tuple[_Queue, bool]]
    _streams: Mapping[Broker, Collection[str]]  # per broker, in the order of their turns
    _extra: list[Message]
    _waited_empty: bool  # the last read waited and found nothing
    _read_keys_of: dict[tuple[str, ...], list[str]]
    _rotation: Iterator[Broker]
    _pace: Pace
    _claim_every: float
    _confirm_after: float
    marks_running: bool

    @property
    def _next_move(self) -> float:
        """When the next look for due messages is due (shared: see `Pace`)."""
        return self._pace.next_move

    @_next_move.setter
    def _next_move(self, at: float) -> None:
        self._pace.next_move = at

    def receive(
        self, count: int = 100, block: float | None = 1.0, *, settle: Settling | None = None
    ) -> list[Message]:
        """Up to `count` messages (never more), waiting up to `block` seconds for the first.

        Serves the topic's queues in turns; moves due delayed messages and retries into
        view, takes over messages whose lease expired, dead-letters entries that cannot be
        decoded, and acknowledges (without returning) messages this group already completed.
        `settle` (made by `settling`) is run first, in the read's round trip where it can.
        """
        with self.errors():
            now = time.monotonic()
            self._look_due(now)
            messages, self._extra = self._extra[:count], self._extra[count:]
            messages = self._still_held(messages)
            try:
                if len(messages) < count and self._pace.take_claim(now, self._claim_every):
                    messages += self._claim(count - len(messages))
                if not messages:
                    messages = self._read(count, self._block_ms(block), settle)
                if settle is not None:  # what did not go with a read
                    self.run_settling(settle)
                return self._drop_done(messages)
            except BaseException:
                self.keep(messages)
                raise

    def _still_held(self, kept: list[Message]) -> list[Message]:
        """Of messages kept for this receive, those no other consumer took over meanwhile
        (a lost one is another's: served here, it would run in two places at once)."""
        if not self._lost:
            return kept
        return [m for m in kept if not self.is_lost(m)]

    def _look_due(self, now: float) -> None:
        """Move due delayed messages and retries into view, trim the queues by the topic's
        retention and retire their idle consumers, when each is due: whoever consumes a
        topic keeps it tidy."""
        if self._pace.take_move(now):
            self._move_due()
        if self._pace.take_every("trim", now, TRIM_EVERY):
            self.client.trim(self.topic.name, self.queues)
        if self._pace.take_every("retire", now, RETIRE_EVERY):
            retire_idle_consumers(self.client, self.topic.name, self.group, self.queues)

    def keep(self, messages: Sequence[Message]) -> None:
        """Keep messages delivered to this consumer and not finished, for the next receive
        to return first (not to be lost to a lease left to lapse)."""
        self._extra[:0] = messages

    def kept(self) -> list[Message]:
        """Messages fetched and kept for the next receive (their leases must stay fresh)."""
        return list(self._extra)

    def _block_ms(self, block: float | None) -> int | None:
        """How long a read may wait for a first message (None: not at all)."""
        return max(1, int(block * 1000)) if block else None

    def _read(self, count: int, block_ms: int | None, settle: Settling | None) -> list[Message]:
        """Read up to `count` new messages, taking the streams in turns; block for the
        first one only when every stream is empty (the watcher's read only until the next
        look for due messages or expired leases: see `Pace`). `settle` goes with the reads
        of its brokers, and is run before any wait."""
        replies: list[Any] = []
        judged: dict[tuple[int, bool, str], str] = {}
        # After a wait that found nothing, wait again at once (a blocking read returns what
        # came meanwhile at once): an idle fetch thread makes one call per block, not two.
        if not (block_ms and self._waited_empty and len(self._streams) == 1):
            for broker, streams in self._streams.items():
                left = count - sum(len(r[1]) for r in replies)
                replies += self._read_now(broker, streams, left, settle)
        if not replies and block_ms:
            if settle is not None:
                self.run_settling(settle)
            broker = next(self._rotation)
            if len(self._streams) > 1:  # one consumer over several brokers: a short wait each
                block_ms = min(block_ms, MULTI_BROKER_BLOCK_MS)
            try:
                if self._pace.watch():
                    block_ms = min(block_ms, self._until_look_ms())
                replies, judged = self._wait(broker, list(self._streams[broker]), block_ms)
            finally:
                self._pace.unwatch()
            self._waited_empty = not replies
        messages = self._decode(replies)
        for m in messages if judged else ():
            m.verdict = judged.get((m.queue, m.from_retry, m.entry_id), m.verdict)
        # A blocking read can wake with one entry from each of several streams: what
        # comes beyond `count` is kept for the next receive (it is this consumer's).
        self._extra += messages[count:]
        return messages[:count]

    def _wait(
        self, broker: Broker, streams: list[str], block_ms: int
    ) -> tuple[list[Any], dict[tuple[int, bool, str], str]]:
        """A blocking read of the streams (an entry each at most), with the `woken` script
        sent behind it in the same round trip, on the thread's own connection: what it
        read (as `_decode` takes it) and the verdicts the script gave, by queue, retry
        stream or not, and entry id. The script looks at the queues' own streams only: a
        call of it costs a few µs per stream it looks at, at every wake, and what comes
        from a retry stream (a retry, already late by its backoff) can take the extra
        round trip. What it did not judge (that, a Redis Cluster, where the two go apart;
        an error) `_check` will."""
        if broker.cluster:
            read: dict[Any, Any] = dict.fromkeys(streams, ">")
            reply = broker.redis.xreadgroup(self.group, self.name, read, count=1, block=block_ms)
            return cast(list[Any], reply) or [], {}
        looked = [s for s in streams if not self._by_stream[s.encode()][1]]
        keys: list[str] = list(looked)
        args: list[Any] = [self.group, self.name, int(self.marks_running)]
        for stream in looked:
            side = self._verdict_keys(self._keys(stream))
            keys += side
            sweep = self.marks_running and sweep_due(side[2], now_ms())
            args.append(self.client.result_ttl_ms if sweep else 0)
        xread = ["XREADGROUP", "GROUP", self.group, self.name, "COUNT", 1, "BLOCK", block_ms]
        xread += ["STREAMS", *streams, *[">"] * len(streams)]
        woken = ("EVALSHA", broker.scripts.woken.sha, len(keys), *keys, *args)
        reply, got = broker.round_trip([xread, woken])
        if isinstance(reply, Exception):
            raise reply
        if isinstance(got, NoScriptError):  # the server lost its scripts: for the next wait
            # a load that failed must not take the read's reply with it: the next wait
            # tries again
            with contextlib.suppress(RedisError):
                broker.scripts.load("woken", broker.sender())
        judged = {}
        for stream, one in zip(looked, got if isinstance(got, list) else (), strict=False):
            if one:
                q, from_retry = self._by_stream[stream.encode()]
                judged[(q.index, from_retry, one[0].decode())] = VERDICTS[one[1][0]]
        # the raw reply: {stream: entries} (RESP3) or [[stream, entries], ...] (RESP2), each
        # entry's fields a flat list: read as the read script's, with no verdicts
        pairs = reply.items() if isinstance(reply, dict) else reply or ()
        return [(stream, entries, None, None) for stream, entries in pairs], judged

    def _until_look_ms(self) -> int:
        """Milliseconds until the next look for due messages or expired leases is due."""
        wait = min(max(0.0, self._next_move - time.monotonic()), self._claim_every)
        return max(1, int(wait * 1000))

    def _read_now(
        self, broker: Broker, wanted: Collection[str], count: int, settle: Settling | None
    ) -> list[Any]:
        """Up to `count` entries without waiting, starting at the stream whose turn it is:
        one `read` script call (each stream asked for its share of what is left and no
        more, since XREADGROUP's COUNT is per stream; the turn is shared in Redis), which
        also checks them for done and cancelled and, with `marks_running`, records the
        others' jobs as running. The calls of `settle` on this broker go first in the same
        round trip (if one of them fails, they are left to `receive`, which runs them again
        once what the read brought is in hand)."""
        if count <= 0:
            return []
        streams = list(wanted)
        keys = self._read_keys(streams)
        args: list[Any] = [self.group, self.name, count, 0, 0]
        if self.marks_running:  # swept at most once a minute, throttled by one of the zsets
            swept = self._keys(streams[0]).running(self.group)
            args[3:] = [1, self.client.result_ttl_ms if sweep_due(swept, now_ms()) else 0]
        calls = settle.calls[broker][0] if settle is not None and broker in settle.calls else []
        if calls or not broker.cluster:
            replies = broker.run_scripts([*calls, ("read", keys, args)], raise_on_error=False)
        else:  # the cluster client's own call: it follows the cluster's changes by itself
            replies = [broker.scripts.read(keys=keys, args=args)]
        if settle is not None and calls and not any(isinstance(r, Exception) for r in replies[:-1]):
            self._settled(settle, broker, replies[:-1])
        got = replies[-1]
        if isinstance(got, Exception):
            raise got
        return [
            (streams[position - 1].encode(), entries, verdicts, int(takeovers))
            for position, entries, verdicts, takeovers in got
        ]

    def _read_keys(self, streams: list[str]) -> list[str]:
        """The read script's keys for these streams: the turn, the streams, and per stream
        its group's done records, its queue's cancel marks, its group's running jobs and
        the count of their takeovers. Made once per set of streams (a stream's keys are
        named after it), not at every read."""
        keys = self._read_keys_of.get(tuple(streams))
        if keys is None:
            if len(self._read_keys_of) >= READ_KEY_SETS:  # (an ordered consumer's changes)
                self._read_keys_of.clear()
            keys = [turn(streams[0], self.group), *streams]
            for stream in streams:
                k = self._keys(stream)
                keys += [*self._verdict_keys(k), k.takeovers(self.group)]
            self._read_keys_of[tuple(streams)] = keys
        return keys

    def _verdict_keys(self, k: QueueKeys) -> list[str]:
        """What a message of the queue is judged by: its group's done records, its queue's
        cancel marks, its group's running jobs (see scripts/_verdicts.lua)."""
        return [k.done(self.group), k.cancelled, k.running(self.group)]

    def _keys(self, stream: str) -> QueueKeys:
        return self._by_stream[stream.encode()][0].keys

    def _claim(self, count: int) -> list[Message]:
        """Take over up to `count` entries whose lease expired (their consumer died or
        stalled), wherever they are in the pending lists.

        An entry is taken only once it has been seen expired for longer than a renewal
        interval: after a broker stalls (hung, paused), every lease on it looks expired
        until their live holders renew them. An entry idle for ten leases (a dead
        process's, marked so by its supervisor) is taken at once."""
        idle_ms = int(self.visibility_timeout * 1000)
        now = time.monotonic()
        seen = self._pace.suspects
        suspects: dict[tuple[str, bytes, int], float] = {}
        self._pace.suspects = suspects
        messages: list[Message] = []
        for broker, streams in self._streams.items():
            pipe = broker.redis.pipeline(transaction=False)
            for stream in streams:
                pipe.xpending_range(stream, self.group, "-", "+", count, idle=idle_ms)
            for stream, reply in zip(streams, pipe.execute(), strict=True):
                ids, delivered = [], {}
                for p in reply:
                    key = (stream, p["message_id"], p["times_delivered"])
                    first = suspects[key] = seen.get(key, now)
                    dead = p["time_since_delivered"] >= 10 * idle_ms
                    if dead or now - first >= self._confirm_after:
                        ids.append(p["message_id"])
                        delivered[p["message_id"]] = p["times_delivered"] + 1
                left = count - len(messages)
                if ids and left > 0:
                    messages += self._take(broker, stream, ids[:left], delivered)
        return messages

    def _take(self, broker: Broker, stream: str, ids: list, delivered: dict) -> list[Message]:
        """Claim expired entries (only those still expired) and count their crashes."""
        idle_ms = int(self.visibility_timeout * 1000)
        q = self._by_stream[stream.encode()][0]
        claimed = self._counted(
            q, lambda pipe: pipe.xclaim(stream, self.group, self.name, idle_ms, ids)
        )
        entries = [(eid, f) for eid, f in cast(list[Any], claimed) if eid is not None]
        if not entries:
            return []
        log.info("took over %d expired message(s) on %s", len(entries), stream)
        return self._count_crashes(broker, stream.encode(), entries, delivered)

    def _counted(self, q: _Queue, claim: Callable[[Any], object]) -> Any:
        """The reply of a claim (`claim` adds it to a transaction) counted as a takeover of
        the queue's entries: the count rises in the same MULTI, so that no read falls
        between them (see `QueueKeys.takeovers`)."""
        conn: Any = q.broker.redis
        pipe = (
            cluster.NodePipeline(conn, q.keys.stream, transaction=True)
            if q.broker.cluster
            else conn.pipeline(transaction=True)
        )
        pipe.incr(q.keys.takeovers(self.group))
        claim(pipe)
        return pipe.execute()[1]

    def _count_crashes(
        self, broker: Broker, stream: bytes, entries: list, delivered: dict | None = None
    ) -> list[Message]:
        """Count each earlier delivery that ended without an outcome as a failed attempt,
        and dead-letter messages that took down their worker more than max_retries times.

        `delivered` maps entry ids to their delivery counts, this one included (read from
        the pending list when not given)."""
        if delivered is None:
            delivered = {
                p["message_id"]: p["times_delivered"]
                for p in broker.redis.xpending_range(
                    stream, self.group, entries[0][0], entries[-1][0], len(entries), self.name
                )
            }
        alive = []
        for msg in self._decode([[stream, entries]]):
            msg.attempt += max(0, delivered.get(msg.entry_id.encode(), 1) - 1)
            if msg.attempt > self.max_retries:
                reason = f"delivered {msg.attempt} times without an outcome (its worker died)"
                log.warning("dead-lettered %s: %s", msg.id, reason)
                self.dead_letter(msg, reason, track=True)
            else:
                alive.append(msg)
        return alive

    def _decode(self, reply: Sequence[Any]) -> list[Message]:
        """Messages of (stream, entries) pairs (their fields as dicts), or (stream, entries,
        verdicts, takeovers) of the read script (their fields as field/value lists; no
        verdicts or takeovers for a blocking read's); undecodable entries are
        dead-lettered."""
        messages, bad = [], []
        topic, group = self.topic.name, self.group
        for stream, entries, *checked in reply:
            q, from_retry = self._by_stream[stream]
            verdicts, takeovers = checked if checked else (None, None)
            for n, (entry_id, fields) in enumerate(entries):
                try:
                    if checked:
                        msg = decode_flat(topic, q.index, entry_id, fields)
                    else:
                        msg = decode_entry(topic, q.index, entry_id, fields)
                except InvalidMessage as exc:
                    as_dict = entry_dict(fields) if checked else fields
                    bad.append((q, from_retry, entry_id, as_dict or {}, str(exc)))
                    continue
                msg.group = group
                msg.from_retry = from_retry
                if verdicts is not None:
                    msg.verdict = VERDICTS[verdicts[n]]
                    msg.takeovers = takeovers
                messages.append(msg)
        for q, from_retry, entry_id, fields, reason in bad:
            log.warning("dead-lettered an undecodable entry of %s: %s", self.topic.name, reason)
            self._dead(q, from_retry, entry_id.decode(), fields, reason, attempt=0, track=None)
        return messages

    def _drop_done(self, messages: list[Message]) -> list[Message]:
        """Acknowledge, without returning them, messages the group already completed and
        messages whose job was cancelled; with `marks_running`, record the others' jobs as
        running in the same round trip. (Every received message passes here: one this
        consumer had lost and now received again is its own again.) The read script
        checked and marked what it read; the rest is checked here.

        First deliveries are checked too: a job cancelled while queued keeps its entry, and
        a message sent again under the id of one completed before is a new entry of it."""
        if not messages:
            return messages
        if self._lost:
            self._owned_again(messages)
        self._check([m for m in messages if m.verdict is None])
        skipped = [m for m in messages if m.verdict]
        if not skipped:
            return messages
        log.info("settled %d done or cancelled message(s) without running", len(skipped))
        self.ack_many(
            skipped, [CANCELLED if m.verdict == "cancelled" else NO_RESULT for m in skipped]
        )
        return [m for m in messages if not m.verdict]

    def _check(self, messages: list[Message]) -> None:
        """Give each message its verdict (done, cancelled or to run) by the `check` script,
        the read script's rule (one round trip per broker); with `marks_running`, the ones
        to run are recorded as running in it."""
        if not messages:
            return
        by_queue = self._by_queue(messages)
        for broker, queues in self._by_broker(self.queues[i] for i in by_queue).items():
            calls = []
            for q in queues:
                keys = self._verdict_keys(q.keys)
                args: list[Any] = [0, 0]
                if self.marks_running:
                    args = [1, self.client.result_ttl_ms if sweep_due(keys[2], now_ms()) else 0]
                for m in by_queue[q.index]:
                    args += [m.id, m.attempt]
                calls.append(("check", keys, args))
            for q, verdicts in zip(queues, broker.scripts.run(calls), strict=True):
                for m, verdict in zip(by_queue[q.index], verdicts, strict=True):
                    m.verdict = VERDICTS[verdict]

    def cancelled(self, messages: Sequence[Message]) -> list[Message]:
        """Those of the messages whose job has been cancelled (one round trip per broker)."""
        out: list[Message] = []
        by_queue = self._by_queue(messages)
        with self.errors():
            for broker, queues in self._by_broker(self.queues[i] for i in by_queue).items():
                pipe = broker.redis.pipeline(transaction=False)
                for q in queues:
                    pipe.zmscore(q.keys.cancelled, [m.id for m in by_queue[q.index]])
                for q, flags in zip(queues, pipe.execute(), strict=True):
                    out += [
                        m for m, f in zip(by_queue[q.index], flags, strict=True) if f is not None
                    ]
        return out

    @staticmethod
    def _by_queue(messages: Iterable[Message]) -> dict[int, list[Message]]:
        return grouped(messages, lambda m: m.queue)

    def move_due(self, until_ms: int | None = None) -> None:
        """Move delayed messages and this group's retries that are due into view now.

        `until_ms` (milliseconds since the epoch on the server's clock, default now) moves
        everything due by then: a far-future value makes every waiting message due at once
        (tests use it to skip backoffs and delays). `receive()` calls this by itself when
        something is due.
        """
        with self.errors():
            self._move_due(until_ms)

    def _move_due(self, until_ms: int | None = None) -> None:
        """Move due delayed messages and this group's due retries into their streams.

        The earliest entry of each waiting set is read first (with the server's time); the
        moving script runs only where something is due (most of the time nothing is)."""
        due_by = until_ms or 0  # the script moves what is due by then, or now (server time)
        wait = MOVE_TICK_MS
        for broker, queues in self._by_broker(self.queues.values()).items():
            keys = [q.keys for q in queues]
            pairs = [(k.delayed, k.stream) for k in keys]
            pairs += [(k.retry(self.group), k.retry_stream(self.group)) for k in keys]
            pipe = broker.pipeline()  # on a cluster: the master of these queues' slot
            pipe.time()
            for zset, _ in pairs:
                pipe.zrange(zset, 0, 0, withscores=True)
            (seconds, micros), *firsts = pipe.execute()
            now = seconds * 1000 + micros // 1000
            calls = []
            for (zset, stream), first in zip(pairs, firsts, strict=True):
                if not first:
                    continue
                score = int(first[0][1])
                if score <= max(now, due_by):
                    calls.append(("move_due", [zset, stream], [due_by, MOVE_BATCH]))
                else:
                    wait = min(wait, score - now)
            for until_due in broker.scripts.run(calls) if calls else ():
                if until_due >= 0:
                    wait = min(wait, until_due)
        self._next_move = time.monotonic() + wait / 1000
