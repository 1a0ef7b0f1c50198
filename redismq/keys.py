"""Every Redis key name redismq uses, built in one place.

All keys of one queue share the hash tag ``{<topic>#<q>}`` so that one Lua script can touch
them atomically, also on Redis Cluster. A queue on a Redis Cluster broker has a stored tag
instead, ``{<topic>~<n>}``, shared by the topic's queues on one master (chosen so that the
slot lands on that master): its keys are ``rmq:{<topic>~<n>}:<q>:…``, and one XREADGROUP
reads all of them. When the meta store is a cluster, meta keys are ``{rmq}:…`` (one slot).
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_NAMESPACE = "rmq"


class QueueKeys:
    """Key names of one queue of a topic."""

    __slots__ = (
        "ns",
        "topic",
        "queue",
        "tag",
        "stream",
        "delayed",
        "counters",
        "cancelled",
        "waiting",
    )

    def __init__(self, ns: str, topic: str, queue: int, shard: str | None = None) -> None:
        self.ns = ns
        self.topic = topic
        self.queue = queue
        # `shard`: the stored hash tag of a queue on a Redis Cluster broker (None: standalone)
        self.tag = f"{ns}:{{{topic}#{queue}}}" if shard is None else f"{ns}:{{{shard}}}:{queue}"
        self.stream = f"{self.tag}:stream"
        self.delayed = f"{self.tag}:delayed"
        # Hash of queue-wide counters (deduplicated, dropped).
        self.counters = f"{self.tag}:counters"
        # Zset of ids of this queue's cancelled jobs, scored by when the mark expires (server
        # time, ms): every group skips them until then.
        self.cancelled = f"{self.tag}:cancels"
        # Zset of ids of jobs whose result someone waits for (`job.result()`), scored by
        # when a waiter last renewed its place (ms): the janitor forgets waiters that died.
        self.waiting = f"{self.tag}:waiters"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, QueueKeys) and (self.topic, self.queue, self.tag) == (
            other.topic,
            other.queue,
            other.tag,
        )

    def __hash__(self) -> int:
        return hash((self.topic, self.queue, self.tag))

    def __repr__(self) -> str:
        return f"QueueKeys({self.ns!r}, {self.topic!r}, {self.queue})"

    def lease(self, group: str) -> str:
        """The lease that gives one consumer of an ordered group this queue."""
        return f"{self.tag}:lease:{group}"

    def steps(self, group: str, message_id: str) -> str:
        """Hash of the effect-once steps of one message in one group: step name -> "done"
        or the claim of the run doing it. It has no expiry while the message can come back
        (pending, retrying, dead-lettered); finishing it (done, purged) gives it the done
        window."""
        return f"{self.tag}:steps:{group}:{message_id}"

    def dedup(self, dedup_key: str) -> str:
        return f"{self.tag}:dedup:{dedup_key}"

    def sent(self, message_id: str) -> str:
        """A short-lived record that a message id was stored: a retried send is a no-op."""
        return f"{self.tag}:sent:{message_id}"

    def retry(self, group: str) -> str:
        """Zset of failed messages waiting for their next attempt, scored by due time."""
        return f"{self.tag}:retry:{group}"

    def retry_stream(self, group: str) -> str:
        """Stream of due retries (and replayed or released messages) for one group only."""
        return f"{self.tag}:rstream:{group}"

    def dead(self, group: str) -> str:
        return f"{self.tag}:dead:{group}"

    def done(self, group: str) -> str:
        """Zset of completed message ids, scored by completion time."""
        return f"{self.tag}:done:{group}"

    def running(self, group: str) -> str:
        """Zset of the ids of task jobs the group's workers run now, scored by start time in
        ms × 1000 + attempt number (1 = first); `job.status()` reads it."""
        return f"{self.tag}:running:{group}"

    def takeovers(self, group: str) -> str:
        """Counter of the takeovers of the group's entries on this queue (its stream and
        its retry stream) and of the consumers' lettings go of them (retry, dead letter,
        release), each counted in its own step: a settle finding the count its messages
        were read with knows none of them changed hands since (settle.lua). It starts at a
        random number when a consumer makes the group, so that a group deleted and made
        again does not count from where the old one's holders read."""
        return f"{self.tag}:takeovers:{group}"

    def stats(self, group: str) -> str:
        """Hash of per-group counters (done, duplicates, retried, dead)."""
        return f"{self.tag}:stats:{group}"

    def job(self, message_id: str) -> str:
        """Hash with a task's status, result or error."""
        return f"{self.tag}:job:{message_id}"

    def outcome(self, message_id: str) -> str:
        """List of one element, the job's final outcome as JSON (status and result);
        `job.result()` blocks on it."""
        return f"{self.tag}:outcome:{message_id}"


def turn(first_stream: str, group: str) -> str:
    """Whose turn it is when `group` reads a set of streams (an index into them), named
    after the first of them: in its hash tag, shared by every consumer that reads that
    set, in any process."""
    return f"{first_stream}:turn:{group}"


def job_index(ns: str, message_id: str) -> str:
    """Where a task's job is (topic, queue, group, task), by its message id alone: kept on
    the broker of the job's queue, so that `client.job(id)` finds it."""
    return f"{ns}:jobindex:{message_id}"


@dataclass(frozen=True, slots=True)
class MetaKeys:
    """Key names of the registry kept in the meta Redis."""

    ns: str = DEFAULT_NAMESPACE
    # On a Redis Cluster meta store every meta key shares the hash tag {ns}: one slot, so that
    # meta scripts and transactions work there.
    tagged: bool = False

    @property
    def prefix(self) -> str:
        return f"{{{self.ns}}}" if self.tagged else self.ns

    @property
    def brokers(self) -> str:
        return f"{self.prefix}:brokers"

    @property
    def broker_health(self) -> str:
        """Hash broker name -> JSON health record written by the NameServer."""
        return f"{self.prefix}:brokers:health"

    @property
    def nameserver_lease(self) -> str:
        """The lease that elects the one acting NameServer."""
        return f"{self.prefix}:nameserver:lease"

    @property
    def topics(self) -> str:
        return f"{self.prefix}:topics"

    @property
    def routes(self) -> str:
        return f"{self.prefix}:routes"

    @property
    def routes_version(self) -> str:
        return f"{self.prefix}:routes:version"

    def groups(self, topic: str) -> str:
        """Set of the groups known to consume a topic."""
        return f"{self.prefix}:groups:{topic}"

    def members(self, topic: str, group: str, share: str) -> str:
        """Zset of the live consumers of an ordered group sharing a set of queues, scored by
        their last beat."""
        return f"{self.prefix}:members:{topic}:{group}:{share}"

    @property
    def workers(self) -> str:
        """Hash worker id -> JSON heartbeat record."""
        return f"{self.prefix}:workers"

    @property
    def outboxes(self) -> str:
        """Hash outbox name -> JSON lag report written by its relays."""
        return f"{self.prefix}:outboxes"
