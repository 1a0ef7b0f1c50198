"""Jobs: the handle a task's sender keeps, to read its status and wait for its result."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from .errors import JobFailed, JobTimeout
from .keys import QueueKeys

if TYPE_CHECKING:
    from .client import Client

# A waiter blocks this long at most before looking again and renewing its place.
WAIT_STEP = 5.0
# A waiter whose place was not renewed for this long died: the janitor forgets it (long
# next to WAIT_STEP, to tolerate clocks that differ between hosts).
WAITER_TIMEOUT = 600.0


class Job:
    """A sent task. `status()` is one of queued, running, done, failed (will retry), dead,
    cancelled."""

    def __init__(
        self,
        client: Client,
        id: str,
        topic: str,
        queue: int,
        group: str,
        entry_id: str | None = None,
    ) -> None:
        self.client = client
        self.id = id
        self.topic = topic
        self.queue = queue
        self.group = group
        self.entry_id = entry_id

    def __repr__(self) -> str:
        return f"Job(id={self.id!r}, topic={self.topic!r}, queue={self.queue})"

    @property
    def keys(self) -> QueueKeys:
        return self.client.router.queue_keys(self.topic, self.queue)

    def _redis(self) -> Any:
        return self.client.router.queue_broker(self.client.topic(self.topic), self.queue).redis

    def info(self) -> dict[str, Any]:
        """The stored record of the job (status, result, error), empty while it runs."""
        with self.client.errors():
            raw = self._redis().hgetall(self.keys.job(self.id))
        return {k.decode(): v.decode() for k, v in raw.items()}

    def status(self) -> str:
        """Where the job is now."""
        with self.client.errors():
            pipe = self._redis().pipeline(transaction=False)
            pipe.hget(self.keys.job(self.id), "status")
            pipe.zscore(self.keys.done(self.group), self.id)
            if self.entry_id:
                pipe.xpending_range(self.keys.stream, self.group, self.entry_id, self.entry_id, 1)
            replies = pipe.execute(raise_on_error=False)
        stored = replies[0].decode() if isinstance(replies[0], bytes) else None
        if stored in ("dead", "cancelled"):
            return stored
        if isinstance(replies[1], float):
            return "done"
        if stored is not None:
            return stored
        if len(replies) > 2 and isinstance(replies[2], list) and replies[2]:
            return "running"
        return "queued"

    def cancel(self) -> bool:
        """Stop the job: a queued one never runs, a running one is stopped as a time limit
        would stop it. Returns False if it had already finished."""
        k = self.keys
        with self.client.errors():
            broker = self.client.router.queue_broker(self.client.topic(self.topic), self.queue)
            return bool(
                broker.scripts.cancel(
                    keys=[k.job(self.id), k.outcome(self.id), k.cancelled, k.done(self.group)],
                    args=[self.id, self.client.result_ttl_ms],
                )
            )

    def progress(self) -> tuple[float, str] | None:
        """The last progress the running task reported: (fraction, text), or None."""
        raw = self.info().get("progress")
        if raw is None:
            return None
        data = json.loads(raw)
        return data["fraction"], data["text"]

    def result(self, timeout: float | None = None) -> Any:
        """Wait up to `timeout` seconds (None: forever) for the result.

        Returns the task's return value; raises JobFailed if it was dead-lettered or
        cancelled, JobTimeout if it has not finished in time. Waiting blocks on the server,
        it does not poll.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        k = self.keys
        key = k.outcome(self.id)
        with self.client.errors():
            r = self._redis()
            try:
                while True:
                    pipe = r.pipeline(transaction=False)
                    # Registered (and renewed) before looking, so that a task finishing now
                    # stores its outcome even when it returned None (those are stored only
                    # for someone waiting).
                    pipe.zadd(k.waiting, {self.id: int(time.time() * 1000)})
                    pipe.lindex(key, 0)
                    pipe.zscore(k.done(self.group), self.id)
                    _, outcome, done = pipe.execute()
                    if outcome is not None:
                        return self._final(json.loads(outcome))
                    if done is not None:
                        return None  # completed before anyone waited: it returned None
                    left = WAIT_STEP if deadline is None else deadline - time.monotonic()
                    if left <= 0:
                        raise JobTimeout(
                            f"job {self.id} has not finished (status: {self.status()})"
                        )
                    # BLMOVE onto itself: wakes every waiter and leaves the element.
                    r.blmove(key, key, min(left, WAIT_STEP), "LEFT", "RIGHT")
            finally:
                r.zrem(k.waiting, self.id)

    def _final(self, outcome: dict[str, Any]) -> Any:
        if outcome["status"] == "done":
            return outcome.get("result")
        if outcome["status"] == "cancelled":
            raise JobFailed(self.id, "Cancelled", "the job was cancelled", "cancelled")
        error = json.loads(self.info().get("error") or "{}")
        raise JobFailed(
            self.id,
            error.get("type", "Error"),
            error.get("message", ""),
            "dead",
            error.get("traceback", ""),
        )
