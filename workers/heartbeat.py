"""Worker registration: each worker process beats into the meta Redis while it lives."""

from __future__ import annotations

import json
import os
import socket
import time
from typing import TYPE_CHECKING, Any

from redismq import Client
from redismq.status import BEAT_EVERY

from .housekeeping import Component

if TYPE_CHECKING:
    from .worker import Worker

MAX_IDS = 100


class Heartbeat(Component):
    """Writes this worker's record (id, host, pid, topics, counts, in flight, last beat)."""

    interval = BEAT_EVERY

    def __init__(
        self, client: Client, worker_id: str, worker: Worker, info: dict[str, Any]
    ) -> None:
        self.client = client
        self.worker_id = worker_id
        self.worker = worker
        self.key = client.router.keys.workers
        self.record: dict[str, Any] = {
            "id": worker_id,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": time.time(),
            **info,
        }

    def tick(self) -> None:
        counts = self.worker.counts
        in_flight = self.worker.in_flight()
        self.record.update(
            processed=counts.processed,
            failed=counts.failed,
            in_flight=len(in_flight),
            in_flight_ids=in_flight[:MAX_IDS],
            last_beat=time.time(),
        )
        self.client.meta.hset(self.key, self.worker_id, json.dumps(self.record))

    def stop(self) -> None:
        self.client.meta.hdel(self.key, self.worker_id)
