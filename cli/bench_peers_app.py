"""The no-op task of the bench's peers, huey and Dramatiq, bound to a broker URL.

Their workers load this module with $REDISMQ_URL set (`huey_consumer
redismq.cli.bench_peers_app.huey`, `dramatiq redismq.cli.bench_peers_app`); the bench
makes its own instances with `make_huey(url)` and `make_dramatiq(url)`.
"""

from __future__ import annotations

import os
from typing import Any

HUEY_NAME = "bench"
DRAMATIQ_QUEUE = "default"


def make_huey(url: str) -> tuple[Any, Any, Any]:
    """A huey instance on `url`, its no-op task and its latency probe."""
    from huey import RedisHuey

    from .bench_app import rq_record_start

    h = RedisHuey(HUEY_NAME, url=url)

    @h.task(name="bench.noop")
    def noop() -> None:
        """Does nothing."""

    @h.task(name="bench.record_start")
    def record_start(sent_at: float) -> None:
        """Records when it started next to when it was sent (as RQ's probe does)."""
        rq_record_start(sent_at)

    return h, noop, record_start


def make_dramatiq(url: str) -> tuple[Any, Any]:
    """A Dramatiq Redis broker on `url` and its no-op actor."""
    import dramatiq
    from dramatiq.brokers.redis import RedisBroker

    broker = RedisBroker(url=url)
    dramatiq.set_broker(broker)

    def noop() -> None:
        """Does nothing."""

    return broker, dramatiq.actor(actor_name="bench_noop", broker=broker)(noop)


if os.environ.get("REDISMQ_PEER") == "huey":
    huey, *_ = make_huey(os.environ["REDISMQ_URL"])
elif os.environ.get("REDISMQ_PEER") == "dramatiq":
    broker, _ = make_dramatiq(os.environ["REDISMQ_URL"])
