"""Lease keeping: the leases of the messages a worker holds, and the queue leases of
ordered groups, renewed well before they expire."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from redismq.consumer import renew_interval
from redismq.ordered import OrderedConsumer

from .housekeeping import Component

if TYPE_CHECKING:
    from .loop import Loop


class LeaseKeeper(Component):
    """Renews the leases of every message the loops of one broker hold, well before they
    expire, in one round trip (so that when a hung broker answers again, all of them are
    renewed before anyone else can look for expired ones)."""

    def __init__(self, loops: Sequence[Loop], visibility_timeout: float) -> None:
        self.loops = loops
        self.interval = renew_interval(visibility_timeout)

    def tick(self) -> None:
        work = [(loop, r) for loop in self.loops for r in loop.consumer.renewals(loop.held())]
        if not work:
            return
        broker = work[0][1].broker
        with work[0][0].consumer.errors():
            replies = broker.scripts.run([r.call for _, r in work])
        for (loop, renewal), reply in zip(work, replies, strict=True):
            lost = renewal.lost(reply)
            if lost:
                still = {m.entry_id for m in loop.held()}
                loop.consumer.lease_lost([m for m in lost if m.entry_id in still])


class LeaseBalancer(Component):
    """Keeps the queue leases of ordered consumers: renews them, takes a fair share, marks
    extra ones to give back."""

    def __init__(self, loops: Sequence[Loop], visibility_timeout: float) -> None:
        self.loops = loops
        self.interval = max(0.05, visibility_timeout / 3)

    def tick(self) -> None:
        for loop in list(self.loops):
            if isinstance(loop.consumer, OrderedConsumer) and not loop.retired:
                loop.consumer.rebalance()
