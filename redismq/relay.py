"""The outbox relay: moves committed outbox rows to their queues, oldest first.

Each row is sent with a dedup key derived from it (its own dedup key, else
`outbox-<uid>`) and then marked sent, so a relay that dies between the two sends it
again as a no-op. Several relays may run at once: where the database locks rows
(PostgreSQL, MySQL: SELECT ... FOR UPDATE SKIP LOCKED) they take different rows, and
everywhere the dedup key makes a second send of a row a no-op. A row whose key has an
older row still waiting waits for it, so that keyed messages keep their order. While a
broker is away its rows wait and the relay keeps retrying with backoff; the other
brokers' rows still go. The relay reports the outbox's lag (rows waiting, age of the
oldest) to the meta Redis, where `redismq status` and the dashboard read it, and
deletes sent rows after `keep_sent` seconds.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

import redis

from .errors import BrokerUnavailable, QueueUnavailable, RedisMQError, TopicNotFound
from .process import StopEvent, process_id
from .sending import Outgoing, choose_queue, prepare_message

if TYPE_CHECKING:
    from .client import Client
    from .outbox import Lag, Outbox, OutboxRow

log = logging.getLogger("redismq.outbox")

BATCH = 100
INTERVAL = 0.1  # seconds between two looks at an idle outbox
BACKOFF_MAX = 5.0
REPORT_EVERY = 2.0
CLEANUP_EVERY = 60.0
KEEP_SENT = 3600.0
# A pass ends after this many sends failed for want of a broker (the rest wait).
MAX_FAILURES = 3
# How long one send waits for its broker: the relay retries by itself, and meanwhile
# reports its lag and sends other brokers' rows.
SEND_TIMEOUT = 1.0
# Sends in flight at once (rows of one key go one after the other).
CONCURRENCY = 8
# A report older than this is dropped (its outbox has had no relay for a day).
REPORT_TTL = 86_400.0


@dataclass(slots=True)
class Pass:
    """What one pass over a batch of rows did."""

    rows: int = 0
    sent: int = 0
    held: int = 0  # left for a later pass: their key's older row, or their broker, is away
    failed: int = 0  # sends that raised
    stopped: bool = False  # nothing could go: every broker of its rows' topics is away

    @property
    def stuck(self) -> bool:
        """Nothing could be sent although rows were waiting."""
        return self.rows > 0 and self.sent == 0 and self.failed > 0


@dataclass(slots=True)
class _Batch:
    """One pass's sends, shared by the threads that make them."""

    result: Pass
    sent: list[tuple[int, str]] = field(default_factory=list)
    away: set[str] = field(default_factory=set)  # brokers that failed in this pass
    failures: int = 0  # brokers that failed (a send whose broker is unknown: each counts)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def stopped(self) -> bool:
        """Enough sends failed for want of a broker: likely every broker is away."""
        return self.failures >= MAX_FAILURES


class Relay:
    """Sends an outbox's rows to their queues; `run()` until stopped, or `relay_once()`.

    `on_lag(lag)` is called with every lag report (for metrics).
    """

    def __init__(
        self,
        outbox: Outbox,
        *,
        batch: int = BATCH,
        interval: float = INTERVAL,
        keep_sent: float = KEEP_SENT,
        report_every: float = REPORT_EVERY,
        concurrency: int = CONCURRENCY,
        on_lag: Callable[[Lag], None] | None = None,
    ) -> None:
        self.outbox = outbox
        self.batch = batch
        self.concurrency = concurrency
        self.interval = interval
        self.keep_sent = keep_sent
        self.report_every = report_every
        self.on_lag = on_lag
        self.id = process_id()
        self.sent = 0
        self.trouble: str | None = None  # the error of the current streak of failures
        self._after = 0  # the next pass looks at rows after this id (0: from the oldest)
        self._swept = 0  # rows sent since the relay last started from the oldest
        self._backoff = 0.0  # the last pause for trouble (0: none since a row was sent)
        self._logged: set[int] = set()  # rows whose own error was logged
        self._next_report = 0.0
        self._next_cleanup = 0.0

    @property
    def client(self) -> Client:
        return self.outbox.client

    # -- sending ----------------------------------------------------------------------
    def relay_once(self) -> Pass:
        """Send one batch of waiting rows and mark those sent; raises OutboxError when the
        database cannot be used (a broker that is away is not an error: its rows wait)."""
        ob, started_after = self.outbox, self._after
        with ob.errors():
            if ob.locks_rows:  # rows stay locked until marked: other relays skip them
                with ob.engine.begin() as conn:
                    rows = ob.waiting(conn, self.batch, self._after, lock=True)
                    result, sent = self._send(rows, ob.earlier_waiting(conn, rows))
                    ob.mark_sent(conn, sent)
            else:
                with ob.engine.connect() as conn:
                    rows = ob.waiting(conn, self.batch, self._after)
                    earlier = ob.earlier_waiting(conn, rows)
                result, sent = self._send(rows, earlier)
                if sent:
                    with ob.engine.begin() as conn:
                        ob.mark_sent(conn, sent)
        self.sent += result.sent
        # Rows left behind are looked past (other brokers' rows still go), until the end
        # of the table sends the relay back to the oldest. A pass that ended for want of
        # every broker starts from the oldest again: they go first once brokers are back.
        full = len(rows) >= self.batch and not result.stopped
        self._after = rows[-1].id if full and (result.held or result.failed) else 0
        self._swept = result.sent + (self._swept if started_after else 0)
        return result

    def _send(
        self, rows: Sequence[OutboxRow], earlier: dict[str, int]
    ) -> tuple[Pass, list[tuple[int, str]]]:
        """Send rows: the rows of one key in order, one after the other; rows of different
        keys (and keyless ones) up to `concurrency` at once. Returns what happened and
        the (row id, message id) sent."""
        batch = _Batch(Pass(rows=len(rows)))
        lanes: dict[str, list[OutboxRow]] = {}
        for row in rows:
            if row.key is not None and earlier.get(row.key, row.id) < row.id:
                batch.result.held += 1  # an older row of its key waits outside this pass
                continue
            lanes.setdefault(row.key if row.key is not None else f"\0{row.uid}", []).append(row)
        if self.concurrency > 1 and len(lanes) > 1:
            list(self._pool.map(lambda lane: self._send_lane(lane, batch), lanes.values()))
        else:
            for lane in lanes.values():
                self._send_lane(lane, batch)
        batch.result.stopped = batch.result.stuck and self._all_away(rows, batch)
        return batch.result, sorted(batch.sent)

    def _all_away(self, rows: Sequence[OutboxRow], batch: _Batch) -> bool:
        """Whether every broker of the rows' topics failed in this pass (a topic that no
        longer exists fails for its own reason: not counted)."""
        topics = []
        for name in {row.topic for row in rows}:
            try:
                topics.append(self.client.topic(name))
            except TopicNotFound:
                continue
            except (BrokerUnavailable, redis.RedisError, OSError):
                return True  # not even the meta Redis answers
        return bool(topics) and all(set(t.placement) <= batch.away for t in topics)

    @cached_property
    def _pool(self) -> ThreadPoolExecutor:
        return ThreadPoolExecutor(self.concurrency, thread_name_prefix="outbox-send")

    def _send_lane(self, lane: list[OutboxRow], batch: _Batch) -> None:
        """Send one key's rows in order; the rest wait after the first that cannot go."""
        for i, row in enumerate(lane):
            if batch.stopped:
                left = len(lane) - i
            elif not self._send_row(row, batch):
                left = len(lane) - i - 1
            else:
                continue
            with batch.lock:
                batch.result.held += left
            return

    def _send_row(self, row: OutboxRow, batch: _Batch) -> bool:
        """Send one row; False when it could not go (its broker away, an error)."""
        broker = None
        try:
            broker = self._broker_of(row)
            if broker in batch.away:
                with batch.lock:
                    batch.result.held += 1
                return False
            headers, index_as = row.message_headers()
            outgoing = prepare_message(
                row.message_body(),
                key=row.key,
                dedup_key=row.send_dedup_key,
                headers=headers,
                max_body=self.client.max_body,
                index_as=index_as,
                message_id=row.uid,  # the id outbox.send returned
            )
            message = self.client.send_outgoing(row.topic, outgoing, timeout=SEND_TIMEOUT)
        except (BrokerUnavailable, QueueUnavailable, redis.RedisError, OSError) as exc:
            with batch.lock:  # for want of a broker: after MAX_FAILURES, the pass ends
                batch.result.failed += 1
                # a broker's failures count once: rows sent to it at once all fail
                if broker is None or broker not in batch.away:
                    batch.failures += 1
                if broker is not None:
                    batch.away.add(broker)
            self._troubled(str(exc))
            return False
        except RedisMQError as exc:  # this row cannot go now (say, its topic is full)
            with batch.lock:
                batch.result.failed += 1
            self._troubled(str(exc))
            if row.id not in self._logged:
                self._logged.add(row.id)
                log.warning("outbox row %d (topic %s) not sent: %s", row.id, row.topic, exc)
            return False
        with batch.lock:
            batch.sent.append((row.id, message.id))
            batch.result.sent += 1
            self._logged.discard(row.id)
        return True

    def close(self) -> None:
        """Stop the threads that send at once."""
        if "_pool" in self.__dict__:
            self._pool.shutdown(wait=True)
            del self.__dict__["_pool"]

    def _broker_of(self, row: OutboxRow) -> str:
        """The broker of the queue the row goes to (chosen as Client.send chooses it)."""
        topic = self.client.topic(row.topic)
        queue = choose_queue(topic, Outgoing(row.uid, {}, row.key, row.send_dedup_key))
        return topic.placement[queue]

    # -- running ----------------------------------------------------------------------
    def run(self, stop: StopEvent | threading.Event) -> None:
        """Relay until `stop` is set: a full batch is followed at once by the next, an
        idle outbox is looked at every `interval`, trouble backs off up to 5 s."""
        while not stop.is_set():
            result: Pass | None = None
            try:
                result = self.relay_once()
            except Exception as exc:  # the database: logged once per streak, retried
                self._troubled(str(exc))
            if result is not None and not result.failed:
                self._recovered()
            self.maintain()
            pause = self._pause(result)
            if pause is not None:
                stop.wait(pause)

    def _pause(self, result: Pass | None) -> float | None:
        """How long to wait before the next pass (None: go on at once), after the last
        one's `result`. A full batch is followed at once by the next, as is a batch left
        behind before the table's end; trouble (a pass that sent nothing for its failures,
        or a look over the table that only found rows held behind an older one of their
        key) backs off, doubling up to BACKOFF_MAX until a row is sent
        or a pass finds nothing wrong."""
        if result is None or result.stuck or (result.held and not (self._after or self._swept)):
            self._backoff = min(BACKOFF_MAX, max(self._backoff, 0.05) * 2)
            return self._backoff
        if result.sent or not (result.failed or result.held):
            self._backoff = 0.0
        if result.rows >= self.batch and (result.sent or self._after):
            return None
        return self.interval

    def _troubled(self, error: str) -> None:
        if self.trouble is None:
            log.warning("outbox relay (%s): %s; retrying", self.outbox.name, error)
        self.trouble = error

    def _recovered(self) -> None:
        if self.trouble is not None:
            log.info("outbox relay (%s): sending again", self.outbox.name)
        self.trouble = None

    def maintain(self, force: bool = False) -> None:
        """Report the lag and delete old sent rows when they are due (never raises)."""
        now = time.monotonic()
        if force or now >= self._next_report:
            self._next_report = now + self.report_every
            self.report()
        if force or now >= self._next_cleanup:
            self._next_cleanup = now + CLEANUP_EVERY
            try:
                deleted = self.outbox.delete_sent(self.keep_sent)
                if deleted:
                    log.debug("deleted %d sent outbox rows", deleted)
            except Exception as exc:
                log.debug("cannot delete sent outbox rows: %s", exc)
            self._prune_reports()

    def report(self) -> Lag | None:
        """Read the lag, hand it to `on_lag` and write it to the meta Redis."""
        lag = None
        try:
            lag = self.outbox.lag()
        except Exception as exc:
            self._troubled(str(exc))
        if lag is not None and self.on_lag is not None:
            try:
                self.on_lag(lag)
            except Exception:
                log.exception("outbox lag callback failed")
        record = {
            "name": self.outbox.name,
            "waiting": None if lag is None else lag.waiting,
            "oldest": None if lag is None else lag.oldest,
            "reported": time.time(),
            "relay": self.id,
            "sent": self.sent,
            "error": self.trouble,
        }
        try:
            with self.client.errors():
                self.client.meta.hset(self._key, self.outbox.name, json.dumps(record))
        except RedisMQError as exc:
            log.debug("cannot report the outbox lag: %s", exc)
        return lag

    @property
    def _key(self) -> str:
        return self.client.router.keys.outboxes

    def _prune_reports(self) -> None:
        """Drop reports of outboxes no relay has reported for a day."""
        try:
            with self.client.errors():
                stale = [
                    r["name"]
                    for r in read_reports(self.client.meta.hgetall(self._key))
                    if time.time() - r["reported"] > REPORT_TTL
                ]
                if stale:
                    self.client.meta.hdel(self._key, *stale)
        except RedisMQError as exc:
            log.debug("cannot prune outbox reports: %s", exc)


def read_reports(raw: dict[Any, Any]) -> list[dict[str, Any]]:
    """The relays' reports in a hash's values (unreadable ones skipped), by name."""
    out = []
    for value in raw.values():
        try:
            record = json.loads(value)
            record["reported"] = float(record["reported"])
            out.append(record)
        except (ValueError, KeyError, TypeError):
            continue
    return sorted(out, key=lambda r: r["name"])


def outbox_status(client: Client) -> list[dict[str, Any]]:
    """Each outbox a relay reported within a day: its name, rows waiting, the age of the
    oldest (seconds), when it was reported (seconds ago), the relay and its error."""
    now = time.time()
    out = []
    for r in read_reports(client.meta.hgetall(client.router.keys.outboxes)):
        ago = now - r["reported"]
        if ago > REPORT_TTL:
            continue
        oldest = r.get("oldest")
        out.append(
            {
                "name": r["name"],
                "waiting": r.get("waiting"),
                "oldest_age": round(now - oldest, 3) if oldest else 0.0,
                "reported_ago": round(max(0.0, ago), 3),
                "relay": r.get("relay"),
                "error": r.get("error"),
            }
        )
    return out
