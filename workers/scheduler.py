"""Sends periodic tasks: every worker runs a scheduler, and the dedup key of each tick
lets exactly one send through."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from redismq import Client, RedisMQError
from redismq.app import Periodic

from .housekeeping import Component

log = logging.getLogger("redismq.scheduler")
# A tick is still sent this long after it was due (e.g. when every worker was restarting).
MISFIRE_GRACE = 60.0


class Scheduler(Component):
    """Sends each periodic task once per tick of its schedule."""

    interval = 0.1

    def __init__(self, client: Client, periodics: Sequence[Periodic]) -> None:
        self.client = client
        self.periodics = list(periodics)
        self.sent: dict[str, float] = {}
        self.failed: dict[str, float] = {}  # the tick whose failure to send was logged

    def tick(self) -> None:
        now = time.time()
        for p in self.periodics:
            tick = p.schedule.last_tick(now)
            if self.sent.get(p.task.name) == tick or now - tick > MISFIRE_GRACE:
                continue
            stamp = f"{tick:.3f}"
            try:
                sent = self.client.send_message(
                    p.task.topic,
                    p.task.body(p.args, p.kwargs),
                    dedup_key=f"periodic:{p.task.name}:{stamp}",
                    headers={"periodic-tick": stamp},
                )
            except RedisMQError as exc:  # this one waits for the next look; the others go
                if self.failed.get(p.task.name) != tick:
                    self.failed[p.task.name] = tick
                    log.warning(
                        "periodic %s (topic %s) tick %s not sent yet: %s",
                        p.task.name,
                        p.task.topic,
                        stamp,
                        exc,
                    )
                continue
            self.sent[p.task.name] = tick
            log.debug("periodic %s tick %s -> %s", p.task.name, stamp, sent.id)
