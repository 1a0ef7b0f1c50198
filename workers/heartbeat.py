"""Worker registration: each worker process beats into the meta Redis while it lives."""

from __future__ import annotations

import json
import os
import socket
import time
from typing import Any

from redismq import Client
from redismq.keys import MetaKeys
from redismq.status import BEAT_EVERY

__all__ = ["BEAT_EVERY", "Heartbeat"]


class Heartbeat:
    """Writes this worker's record (id, host, pid, topics, counts, in flight, last beat)."""

    def __init__(self, client: Client, worker_id: str, info: dict[str, Any]) -> None:
        self.client = client
        self.worker_id = worker_id
        self.key = MetaKeys(client.namespace).workers
        self.record: dict[str, Any] = {
            "id": worker_id,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": time.time(),
            **info,
        }

    def beat(self, **state: Any) -> None:
        """Publish the current state."""
        self.record.update(state, last_beat=time.time())
        self.client.meta.hset(self.key, self.worker_id, json.dumps(self.record))

    def remove(self) -> None:
        self.client.meta.hdel(self.key, self.worker_id)
