"""Queue inspection: the read-only counts of a queue and its groups, and the one definition
of a backlog, which every reader calls (status, the dashboard, the metrics, broker removal)
and which scripts/_backlog.lua mirrors for the `send` script of a bounded topic and for
`Consumer.backlog()` (the `--burst` exit).

A group's backlog on one queue is what that group has not finished:

- undelivered: entries of the stream after the group's last-delivered id (the whole stream
  when the group does not exist there yet);
- pending: entries delivered to the group and not yet acknowledged;
- its retry stream: every entry (pending or not yet delivered again);
- retrying: its messages waiting for their next attempt;
- plus the queue's delayed messages (every group will get them).

A queue's backlog is the largest of its groups' (the slowest group decides); with no group
yet, the stream's length plus the delayed messages. A topic's backlog is, for the slowest
group, the sum over the queues. scripts/_backlog.lua is the same definition in Lua
(tests/test_backlog.py holds the two equal).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .keys import QueueKeys

QUEUE_COMMANDS = 4
GROUP_COMMANDS = 8


def queue_commands(pipe: Any, k: QueueKeys, groups: Iterable[str]) -> None:
    """Queue on `pipe` the read-only commands that count one queue (QUEUE_COMMANDS replies)
    and each of its groups (GROUP_COMMANDS replies each), in this order."""
    pipe.xinfo_stream(k.stream)
    pipe.zcard(k.delayed)
    pipe.hgetall(k.counters)
    pipe.xinfo_groups(k.stream)
    for g in groups:
        pipe.xpending(k.stream, g)
        pipe.xpending(k.retry_stream(g), g)
        pipe.xlen(k.retry_stream(g))
        pipe.zcard(k.retry(g))
        pipe.xlen(k.dead(g))
        pipe.zcard(k.done(g))
        pipe.hgetall(k.stats(g))
        pipe.xinfo_consumers(k.stream, g)


@dataclass(slots=True)
class GroupCounts:
    """One group's counts on one queue (or summed over a topic's queues)."""

    pending: int = 0  # delivered and not acknowledged (stream and retry stream)
    lag: int = 0  # not delivered yet (stream and retry stream)
    retrying: int = 0  # waiting for their next attempt
    dead: int = 0
    done: int = 0
    duplicates: int = 0
    retried: int = 0
    finished: int = 0
    consumers: int = 0
    oldest_ms: int | None = None  # entry time of the oldest pending message
    # the group's last-delivered id on the stream, when the server could not tell its lag
    unknown_lag_after: str | None = None

    @property
    def unfinished(self) -> int:
        """Pending, undelivered and retrying: the backlog without the delayed messages."""
        return self.pending + self.lag + self.retrying

    def add(self, other: GroupCounts) -> None:
        """Add another queue's counts of the same group (consumers: the most on one queue)."""
        for name in ("pending", "lag", "retrying", "dead", "done", "duplicates", "retried"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.finished += other.finished
        self.consumers = max(self.consumers, other.consumers)
        if other.oldest_ms is not None:
            self.oldest_ms = (
                other.oldest_ms if self.oldest_ms is None else min(self.oldest_ms, other.oldest_ms)
            )


@dataclass(slots=True)
class QueueCounts:
    """One queue's counts and those of each of its groups."""

    length: int = 0
    added: int = 0
    delayed: int = 0
    deduplicated: int = 0
    dropped: int = 0
    groups: dict[str, GroupCounts] = field(default_factory=dict)

    def group_backlog(self, group: str) -> int:
        """What `group` has not finished on this queue, delayed messages included."""
        return self.groups[group].unfinished + self.delayed

    @property
    def backlog(self) -> int:
        """What the slowest group has not finished (with no group: every entry), plus the
        delayed messages."""
        if not self.groups:
            return self.length + self.delayed
        return max(g.unfinished for g in self.groups.values()) + self.delayed


def topic_backlog(length: int, delayed: int, groups: Iterable[GroupCounts]) -> int:
    """A topic's backlog from its counts summed over its queues: the slowest group's
    unfinished messages (with no group: every entry), plus the delayed messages."""
    unfinished = [g.unfinished for g in groups]
    return (max(unfinished) if unfinished else length) + delayed


def _ok(reply: Any) -> Any:
    """A reply, or None for an error (a stream or group that does not exist yet)."""
    return None if isinstance(reply, Exception) else reply


def _entry_ms(entry_id: Any) -> int | None:
    if not entry_id:
        return None
    text = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
    head = text.partition("-")[0]
    return int(head) if head.isdigit() else None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def parse_queue(replies: list[Any], groups: list[str]) -> QueueCounts:
    """The counts of one queue from the replies of `queue_commands` (errors count as empty:
    a stream or group that does not exist yet)."""
    replies = [_ok(r) for r in replies]
    stream, delayed, counters, infos = replies[:QUEUE_COMMANDS]
    stream, counters = stream or {}, counters or {}
    out = QueueCounts(
        length=int(stream.get("length") or 0),
        added=int(stream.get("entries-added") or 0),
        delayed=int(delayed or 0),
        deduplicated=int(counters.get(b"deduplicated", 0)),
        dropped=int(counters.get(b"dropped", 0)),
    )
    on_stream = {_text(g["name"]): g for g in infos or []}
    for i, g in enumerate(groups):
        at = QUEUE_COMMANDS + GROUP_COMMANDS * i
        main, retry, retry_len, retrying, dead, done, stats, consumers = replies[
            at : at + GROUP_COMMANDS
        ]
        main, retry, stats = main or {}, retry or {}, stats or {}
        retry_pending = int(retry.get("pending") or 0)
        counts = GroupCounts(
            pending=int(main.get("pending") or 0) + retry_pending,
            lag=max(0, int(retry_len or 0) - retry_pending),
            retrying=int(retrying or 0),
            dead=int(dead or 0),
            done=int(done or 0),
            duplicates=int(stats.get(b"duplicates", 0)),
            retried=int(stats.get(b"retried", 0)),
            finished=int(stats.get(b"done", 0)) + int(stats.get(b"dead", 0)),
            consumers=len(consumers) if isinstance(consumers, list) else 0,
        )
        oldest = [m for m in (_entry_ms(main.get("min")), _entry_ms(retry.get("min"))) if m]
        counts.oldest_ms = min(oldest) if oldest else None
        info = on_stream.get(g)
        if info is None:  # not created on this stream yet: it will read every entry
            counts.lag += out.length
        elif info.get("lag") is None:  # the server cannot tell (entries deleted by hand)
            counts.unknown_lag_after = _text(info["last-delivered-id"])
        else:  # lag also counts entries trimmed away (a hard cap): never more than are left
            counts.lag += min(int(info["lag"]), out.length)
        out.groups[g] = counts
    return out


def count_unknown_lag(conn: Any, k: QueueKeys, counts: QueueCounts) -> None:
    """Count the undelivered entries of each group whose lag the server could not tell (one
    more call each, rare: only after entries were deleted by hand)."""
    for g in counts.groups.values():
        if g.unknown_lag_after is not None:
            g.lag += len(conn.xrange(k.stream, f"({g.unknown_lag_after}", "+"))
            g.unknown_lag_after = None


def read_queue(conn: Any, k: QueueKeys, groups: list[str]) -> QueueCounts:
    """The counts of one queue and of its `groups`, read with read-only commands."""
    pipe = conn.pipeline(transaction=False)
    queue_commands(pipe, k, groups)
    counts = parse_queue(pipe.execute(raise_on_error=False), groups)
    count_unknown_lag(conn, k, counts)
    return counts


__all__ = [
    "GroupCounts",
    "QueueCounts",
    "count_unknown_lag",
    "parse_queue",
    "queue_commands",
    "read_queue",
    "topic_backlog",
]
