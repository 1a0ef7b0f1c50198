"""Jobs: the handle on a sent task, to read its status and wait for its result, found from
the `Job` its send returned or from its id alone (`client.job(id)`)."""

from __future__ import annotations

import functools
import json
import logging
import time
from collections import defaultdict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import redis

from .arguments import decode_value, may_be_tagged
from .errors import (
    BrokerUnavailable,
    JobFailed,
    JobNotFound,
    JobTimeout,
    RedisMQError,
    ResultExpired,
)
from .keys import QueueKeys, job_index
from .message import Message, now_ms

if TYPE_CHECKING:
    from .aio import AsyncClient
    from .client import Client
    from .consumer import Consumer

log = logging.getLogger("redismq.job")

# A waiter blocks this long at most before looking again and renewing its place.
WAIT_STEP = 5.0
# A waiter whose place was not renewed for this long died: the janitor forgets it (long
# next to WAIT_STEP, to tolerate clocks that differ between hosts).
WAITER_TIMEOUT = 600.0


# -- the rules, shared by Job and AsyncJob -----------------------------------------------


def status_of(
    stored: bytes | None, done: float | None, running: float | None = None, pending: Any = None
) -> str:
    """A job's status from its stored record, its group's done and running records and
    (when its stream entry is known) its pending entry."""
    text = stored.decode() if isinstance(stored, bytes) else None
    if text in ("dead", "cancelled"):
        return text
    if isinstance(done, float) or text == "done":
        return "done"
    if isinstance(running, float) or (isinstance(pending, list) and pending):
        return "running"
    if text == "failed":
        return "retrying"
    return "queued"


def parse_outcome(raw: bytes) -> dict[str, Any]:
    """A stored outcome, its result's tagged values (datetime, Decimal, ...) turned back
    into their types."""
    outcome = json.loads(raw)
    if "result" in outcome and may_be_tagged(raw):
        outcome["result"] = decode_value(outcome["result"])
    return outcome


def final_result(job_id: str, outcome: dict[str, Any], error: str | None) -> Any:
    """The result of a finished job; raises JobFailed for a dead or cancelled one."""
    if outcome["status"] == "done":
        return outcome.get("result")
    if outcome["status"] == "cancelled":
        raise JobFailed(job_id, "Cancelled", "the job was cancelled", "cancelled")
    e = json.loads(error or "{}")
    raise JobFailed(
        job_id, e.get("type", "Error"), e.get("message", ""), "dead", e.get("traceback", "")
    )


def cancel_args(
    client: Client | AsyncClient, keys: QueueKeys, job_id: str, group: str, index: Any
) -> tuple[list[str], list[Any]]:
    """Keys and arguments of the cancel script for a job (`index`: its id index entry, if
    any). Its mark, honoured by every group, lasts as long as the job's records (the longer
    of the result and done TTLs); for a delayed job, that long past its due time."""
    due = parse_index(job_id, index)["due"] if index is not None else 0
    wait = max(0, due - now_ms())
    return (
        [keys.job(job_id), keys.outcome(job_id), keys.cancelled, keys.done(group)]
        + [keys.running(group)],
        [job_id, client.result_ttl_ms + wait, max(client.result_ttl_ms, client.done_ttl_ms) + wait],
    )


def finished_outcome(
    job_id: str, outcome: bytes | None, done: float, result_ttl_ms: int
) -> dict[str, Any]:
    """A finished job's outcome from what `result()` read: its stored outcome, else its
    done record. Raises ResultExpired for one done longer than result_ttl ago (the
    reader's: the worker's should be the same) without an outcome."""
    if outcome is not None:
        return parse_outcome(outcome)
    if now_ms() - done > result_ttl_ms:
        raise ResultExpired(job_id)
    return {"status": "done", "result": None}  # done before anyone waited: it returned None


def index_value(topic: str, queue: int, group: str, task: str, due_ms: int = 0) -> str:
    """The id index entry of a task's job (JSON: it reads well in redis-cli); `due_ms`:
    when a delayed one is due (ms since the epoch)."""
    if not due_ms:
        return _index_value(topic, queue, group, task)
    where = {"topic": topic, "queue": queue, "group": group, "task": task, "due": due_ms}
    return json.dumps(where)


@functools.lru_cache(maxsize=1024)  # a few per task: made once, not at every send
def _index_value(topic: str, queue: int, group: str, task: str) -> str:
    return json.dumps({"topic": topic, "queue": queue, "group": group, "task": task})


def parse_index(message_id: str, raw: bytes | str) -> dict[str, Any]:
    try:
        where = json.loads(raw)
        return {k: where[k] for k in ("topic", "queue", "group", "task")} | {
            "due": where.get("due", 0)
        }
    except (ValueError, KeyError, TypeError):
        raise RedisMQError(f"the index entry of job {message_id!r} is malformed") from None


def check_job_id(message_id: Any) -> str:
    if not isinstance(message_id, str) or not message_id or len(message_id) > 200:
        raise JobNotFound(str(message_id))
    return message_id


def sent_at_ms(message_id: str) -> int | None:
    """When a message was made, from its id (None for an id redismq did not make)."""
    try:
        return int(message_id[:12], 16) if len(message_id) == 32 else None
    except ValueError:
        return None


def running_score(started_ms: int, attempt: int) -> int:
    """A job's score in its group's running zset: start time and attempt number (1 = first)."""
    return started_ms * 1000 + min(attempt, 999)


def parse_running(score: float | None) -> tuple[int | None, int | None]:
    """(start time ms, attempt number) of a running zset score; (None, None) for none."""
    if score is None:
        return None, None
    n = int(score)
    return n // 1000, n % 1000


# How often this process sweeps stale marks out of a running zset.
SWEEP_EVERY_MS = 60_000
_sweeps: dict[str, int] = {}


def mark_running(
    consumer: Consumer, messages: Sequence[Message], previous: Sequence[Message] = ()
) -> None:
    """Record that a worker runs these task messages now, and no longer the `previous`
    ones (retried, dead-lettered or handed back; settling takes a job off by itself): one
    round trip per broker. Failing to record is logged only."""
    now, horizon = now_ms(), consumer.client.result_ttl_ms
    by_queue: dict[int, tuple[list[Message], list[Message]]] = defaultdict(lambda: ([], []))
    for m in messages:
        by_queue[m.queue][0].append(m)
    for m in previous:
        by_queue[m.queue][1].append(m)
    try:
        with consumer.errors():
            for broker, queues in consumer._by_broker(consumer.queues[i] for i in by_queue).items():
                pipe = broker.redis.pipeline(transaction=False)
                for q in queues:
                    new, old = by_queue[q.index]
                    running_commands(pipe, q.keys.running(consumer.group), new, old, now, horizon)
                pipe.execute()
    except (RedisMQError, redis.RedisError) as exc:
        log.warning("could not record which jobs run: %s", exc)


def running_commands(
    pipe: Any,
    key: str,
    new: Sequence[Message],
    old: Sequence[Message] = (),
    now: int = 0,
    horizon: int = 0,
) -> None:
    """Add to a pipeline what records that the `new` jobs of one running zset (`key`) run
    since `now` (ms) and the `old` ones no longer; now and then, what sweeps out marks
    older than `horizon` ms (those a dead worker left behind)."""
    gone = {m.id for m in old} - {m.id for m in new}
    if gone:
        pipe.zrem(key, *gone)
    if new:
        pipe.zadd(key, {m.id: running_score(now, m.attempt + 1) for m in new})
    if new and sweep_due(key, now):
        pipe.zremrangebyscore(key, "-inf", (now - horizon) * 1000)


def sweep_due(key: str, now: int) -> bool:
    """Whether this process sweeps the stale marks out of a running zset now (at most
    every SWEEP_EVERY_MS per zset); if so, the caller does."""
    if _sweeps.get(key, 0) >= now - SWEEP_EVERY_MS:
        return False
    _sweeps[key] = now
    return True


# -- the sync handle ---------------------------------------------------------------------


class Job:
    """A sent task. `status()` is one of queued, running, retrying (failed, another attempt
    is due), done, dead (dead-lettered), cancelled."""

    def __init__(
        self,
        client: Client,
        id: str,
        topic: str,
        queue: int,
        group: str,
        entry_id: str | None = None,
        task: str | None = None,
    ) -> None:
        self.client = client
        self.id = id
        self.topic = topic
        self.queue = queue
        self.group = group
        self.entry_id = entry_id
        self.task = task

    def __repr__(self) -> str:
        return f"Job(id={self.id!r}, topic={self.topic!r}, queue={self.queue})"

    @property
    def keys(self) -> QueueKeys:
        return self.client.router.queue_keys(self.topic, self.queue)

    def _redis(self) -> Any:
        return self.client.router.queue_broker(self.client.topic(self.topic), self.queue).redis

    def info(self) -> dict[str, Any]:
        """The stored record of the job (status, attempt, started, progress, error), empty
        while nothing ran it yet."""
        with self.client.errors():
            raw = self._redis().hgetall(self.keys.job(self.id))
        return {k.decode(): v.decode() for k, v in raw.items()}

    def status(self) -> str:
        """Where the job is now."""
        with self.client.errors():
            pipe = self._redis().pipeline(transaction=False)
            pipe.hget(self.keys.job(self.id), "status")
            pipe.zscore(self.keys.done(self.group), self.id)
            pipe.zscore(self.keys.running(self.group), self.id)
            if self.entry_id:
                pipe.xpending_range(self.keys.stream, self.group, self.entry_id, self.entry_id, 1)
            replies = pipe.execute(raise_on_error=False)
        return status_of(*replies)

    def cancel(self) -> bool:
        """Stop the job, in every group that consumes it: a queued one never runs, a running
        one is stopped as a time limit would stop it. Returns False (and changes nothing) if
        it had already finished. A job that finishes while the cancel reaches its worker
        keeps its result and reads done."""
        with self.client.errors():
            broker = self.client.router.queue_broker(self.client.topic(self.topic), self.queue)
            index = broker.redis.get(job_index(self.client.namespace, self.id))
            keys, args = cancel_args(self.client, self.keys, self.id, self.group, index)
            return bool(broker.scripts.cancel(keys=keys, args=args))

    def progress(self) -> tuple[float, str] | None:
        """The last progress the running task reported: (fraction, text), or None."""
        raw = self.info().get("progress")
        if raw is None:
            return None
        data = json.loads(raw)
        return data["fraction"], data["text"]

    def describe(self) -> dict[str, Any]:
        """Everything known about the job: where it is, status, attempts, progress, times
        (milliseconds since the epoch), error, traceback and stored result."""
        with self.client.errors():
            pipe = self._redis().pipeline(transaction=False)
            describe_reads(pipe, self)
            return describe(self, *pipe.execute())

    def result(self, timeout: float | None = None) -> Any:
        """Wait up to `timeout` seconds (None: forever) for the result.

        Returns the task's return value; raises JobFailed if it was dead-lettered or
        cancelled, JobTimeout if it has not finished in time. Waiting blocks on the server,
        it does not poll.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        k = self.keys
        key, ttl = k.outcome(self.id), self.client.result_ttl_ms
        with self.client.errors():
            r = self._redis()
            while True:
                pipe = r.pipeline(transaction=False)
                # Registered (and renewed) before looking, so that a task finishing now
                # stores its outcome even when it returned None (those are stored only for
                # someone waiting). The place is shared by all the job's waiters: one that
                # gives up leaves it (the janitor forgets it after WAITER_TIMEOUT).
                pipe.zadd(k.waiting, {self.id: int(time.time() * 1000)})
                pipe.lindex(key, 0)
                pipe.zscore(k.done(self.group), self.id)
                _, stored, done = pipe.execute()
                if stored is not None or done is not None:  # finished: no one need wait
                    r.zrem(k.waiting, self.id)
                    return self._final(finished_outcome(self.id, stored, done, ttl))
                left = WAIT_STEP if deadline is None else deadline - time.monotonic()
                if left <= 0:
                    raise JobTimeout(f"job {self.id} has not finished (status: {self.status()})")
                # BLMOVE onto itself: wakes every waiter and leaves the element.
                r.blmove(key, key, min(left, WAIT_STEP), "LEFT", "RIGHT")

    def _final(self, outcome: dict[str, Any]) -> Any:
        error = self.info().get("error") if outcome["status"] == "dead" else None
        return final_result(self.id, outcome, error)


def describe_reads(pipe: Any, job: Job | AsyncJob) -> None:
    """Add to a pipeline the reads `describe` takes."""
    k = job.keys
    pipe.hgetall(k.job(job.id))
    pipe.zscore(k.done(job.group), job.id)
    pipe.zscore(k.running(job.group), job.id)
    pipe.lindex(k.outcome(job.id), 0)


def describe(job: Job | AsyncJob, raw: dict, done: Any, running: Any, outcome: Any) -> dict:
    """The record `describe()` returns, from the job hash, the done and running records and
    the outcome (as `describe_reads` read them)."""
    info = {a.decode(): b.decode() for a, b in raw.items()}
    error = json.loads(info.get("error") or "null")
    progress = json.loads(info["progress"]) if "progress" in info else None
    status = status_of(info.get("status", "").encode() or None, done, running)
    started, attempt = parse_running(running)
    failed = (error or {}).get("attempt", 0)
    if attempt is None:  # not running now: from the last failure, if any
        attempt = {"queued": 0, "done": failed + 1}.get(status, failed)
        attempt = max(attempt, int(info.get("attempt", 0)))  # a run a cancel stopped
    stored = json.loads(outcome) if outcome is not None else {}
    return {
        "id": job.id,
        "topic": job.topic,
        "queue": job.queue,
        "group": job.group,
        "task": job.task,
        "status": status,
        "attempts": attempt,
        "progress": progress and {"fraction": progress["fraction"], "text": progress["text"]},
        "sent_at": sent_at_ms(job.id),
        "started_at": started,
        "finished_at": finished_at(status, done, error),
        "retry_at": int(info["retry_at"]) if status == "retrying" and "retry_at" in info else None,
        "error": error and {"type": error.get("type"), "message": error.get("message")},
        "traceback": (error or {}).get("traceback"),
        "result": stored.get("result"),
    }


def finished_at(status: str, done: Any, error: dict | None) -> int | None:
    """When a job finished (ms): its done record's time, or its last failure's if dead."""
    if isinstance(done, float):
        return int(done)
    if status == "dead" and error:
        return error.get("at")
    return None


def find_job(client: Client, message_id: str) -> Job:
    """The job of a task by its message id alone; raises JobNotFound."""
    check_job_id(message_id)
    unreachable: BrokerUnavailable | None = None
    for name in client.router.broker_names():
        try:
            with client.errors():
                raw = client.router.broker(name).redis.get(job_index(client.namespace, message_id))
        except BrokerUnavailable as exc:
            unreachable = exc
            continue
        if raw is not None:
            where = parse_index(message_id, raw)
            return Job(
                client,
                message_id,
                where["topic"],
                where["queue"],
                where["group"],
                None,
                where["task"],
            )
    if unreachable is not None:
        raise unreachable
    raise JobNotFound(message_id)


# -- the async handle --------------------------------------------------------------------


class AsyncJob:
    """A sent task seen from async code: `Job` with awaitable methods."""

    def __init__(
        self,
        client: AsyncClient,
        id: str,
        topic: str,
        queue: int,
        group: str,
        task: str | None,
        entry_id: str | None = None,
    ) -> None:
        self.client = client
        self.id = id
        self.topic = topic
        self.queue = queue
        self.group = group
        self.task = task
        self.entry_id = entry_id

    def __repr__(self) -> str:
        return f"AsyncJob(id={self.id!r}, topic={self.topic!r}, queue={self.queue})"

    @property
    def keys(self) -> QueueKeys:
        return self.client.router.queue_keys(self.topic, self.queue)

    async def _redis(self) -> Any:
        topic = await self.client.topic(self.topic, create=False)
        return (await self.client.router.queue_broker(topic, self.queue)).redis

    async def info(self) -> dict[str, Any]:
        """The stored record of the job (see `Job.info`)."""
        with self.client.errors():
            raw = await (await self._redis()).hgetall(self.keys.job(self.id))
        return {k.decode(): v.decode() for k, v in raw.items()}

    async def status(self) -> str:
        """Where the job is now (see `Job.status`)."""
        with self.client.errors():
            async with (await self._redis()).pipeline(transaction=False) as pipe:
                pipe.hget(self.keys.job(self.id), "status")
                pipe.zscore(self.keys.done(self.group), self.id)
                pipe.zscore(self.keys.running(self.group), self.id)
                if self.entry_id:
                    stream, entry = self.keys.stream, self.entry_id
                    pipe.xpending_range(stream, self.group, entry, entry, 1)
                replies = await pipe.execute(raise_on_error=False)
        return status_of(*replies)

    async def describe(self) -> dict[str, Any]:
        """Everything known about the job (see `Job.describe`)."""
        with self.client.errors():
            async with (await self._redis()).pipeline(transaction=False) as pipe:
                describe_reads(pipe, self)
                return describe(self, *await pipe.execute())

    async def progress(self) -> tuple[float, str] | None:
        """The last progress the running task reported: (fraction, text), or None."""
        raw = (await self.info()).get("progress")
        if raw is None:
            return None
        data = json.loads(raw)
        return data["fraction"], data["text"]

    async def cancel(self) -> bool:
        """Stop the job (see `Job.cancel`)."""
        with self.client.errors():
            topic = await self.client.topic(self.topic, create=False)
            broker = await self.client.router.queue_broker(topic, self.queue)
            index = await broker.redis.get(job_index(self.client.namespace, self.id))
            keys, args = cancel_args(self.client, self.keys, self.id, self.group, index)
            return bool(await broker.scripts.cancel(keys=keys, args=args))

    async def result(self, timeout: float | None = None) -> Any:
        """Wait up to `timeout` seconds (None: forever) for the result, without blocking
        the event loop; raises JobFailed or JobTimeout as `Job.result` does."""
        deadline = None if timeout is None else time.monotonic() + timeout
        k = self.keys
        key, ttl = k.outcome(self.id), self.client.result_ttl_ms
        with self.client.errors():
            r = await self._redis()
            while True:
                async with r.pipeline(transaction=False) as pipe:
                    pipe.zadd(k.waiting, {self.id: int(time.time() * 1000)})  # see Job.result
                    pipe.lindex(key, 0)
                    pipe.zscore(k.done(self.group), self.id)
                    _, stored, done = await pipe.execute()
                if stored is not None or done is not None:
                    await r.zrem(k.waiting, self.id)
                    outcome = finished_outcome(self.id, stored, done, ttl)
                    dead = outcome["status"] == "dead"
                    error = (await self.info()).get("error") if dead else None
                    return final_result(self.id, outcome, error)
                left = WAIT_STEP if deadline is None else deadline - time.monotonic()
                if left <= 0:
                    raise JobTimeout(
                        f"job {self.id} has not finished (status: {await self.status()})"
                    )
                await r.blmove(key, key, min(left, WAIT_STEP), "LEFT", "RIGHT")


async def find_async_job(client: AsyncClient, message_id: str) -> AsyncJob:
    """The job of a task by its message id alone, for async code; raises JobNotFound."""
    check_job_id(message_id)
    unreachable: BrokerUnavailable | None = None
    for name in await client.router.broker_names():
        try:
            with client.errors():
                broker = await client.router.broker(name)
                raw = await broker.redis.get(job_index(client.namespace, message_id))
        except BrokerUnavailable as exc:
            unreachable = exc
            continue
        if raw is not None:
            where = parse_index(message_id, raw)
            return AsyncJob(
                client, message_id, where["topic"], where["queue"], where["group"], where["task"]
            )
    if unreachable is not None:
        raise unreachable
    raise JobNotFound(message_id)
