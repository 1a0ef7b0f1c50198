"""The outbox relay inside a worker (`redismq worker ... --outbox DB_URL`): a component
that runs `redismq.relay.Relay` on a thread of its own, so that a slow database or an
absent broker never holds up the worker's other duties."""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from redismq import Client
from redismq.outbox import Lag, Outbox
from redismq.relay import Relay

from .housekeeping import Component

if TYPE_CHECKING:
    from prometheus_client import Gauge

log = logging.getLogger("redismq.outbox")


class LagGauges:
    """The Prometheus gauges of one outbox's lag (labelled by its name)."""

    def __init__(self, name: str) -> None:
        from prometheus_client import Gauge

        self.name = name
        self.waiting: Gauge = Gauge(
            "redismq_outbox_waiting",
            "Outbox rows committed and not yet sent to their queue.",
            ("outbox",),
            multiprocess_mode="livemostrecent",
        )
        self.oldest: Gauge = Gauge(
            "redismq_outbox_oldest_seconds",
            "Age of the oldest outbox row not yet sent.",
            ("outbox",),
            multiprocess_mode="livemostrecent",
        )

    def set(self, lag: Lag) -> None:
        self.waiting.labels(self.name).set(lag.waiting)
        self.oldest.labels(self.name).set(lag.oldest_age())


# How long a worker's stop waits for its relay's thread (a batch under way ends first); a
# relay held longer by its database (a lock, a partition) is left to the process's exit.
RELAY_JOIN = 10.0


class OutboxRelay(Component):
    """Relays an outbox on a thread of its own; `tick()` starts it (again, should it have
    died) and `stop()` ends it."""

    interval = 1.0

    def __init__(self, client: Client, db_url: str, *, metrics: bool = False) -> None:
        self.outbox = Outbox(client, db_url)
        gauges = LagGauges(self.outbox.name) if metrics else None
        self.relay = Relay(self.outbox, on_lag=gauges.set if gauges else None)
        self._stop = threading.Event()
        self._relay_thread: threading.Thread | None = None

    def tick(self) -> None:
        if self._stop.is_set():
            return
        if self._relay_thread is not None and self._relay_thread.is_alive():
            return
        if self._relay_thread is not None:
            log.error("the outbox relay thread died: starting it again")
        self._relay_thread = threading.Thread(target=self._relay, name="outbox-relay", daemon=True)
        self._relay_thread.start()

    def _relay(self) -> None:
        log.info("relaying outbox %s", self.outbox.name)
        self.relay.run(self._stop)

    def stop(self) -> None:
        self._stop.set()
        thread = self._relay_thread
        if thread is not None:
            thread.join(RELAY_JOIN)
            if thread.is_alive():  # its last report and clean-up would wait as long
                log.warning("the outbox relay still waits for its database: left behind")
                return
        self.relay.maintain(force=True)
        self.relay.close()
        self.outbox.close()
