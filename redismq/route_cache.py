"""The cache of topics read from the meta Redis, kept until the route version changes
(shared by the sync `Router` and the asyncio one)."""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

from .health import REFRESH_INTERVAL

if TYPE_CHECKING:
    from .routing import Topic


def _version_number(version: bytes | str | None) -> int:
    return int(version or 0)


class RouteCache:
    """Topics read from the meta Redis, kept until the route version changes.

    The version is re-read at most once per REFRESH_INTERVAL seconds.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._topics: dict[str, Topic] = {}
        self._version: bytes | str | None = None
        self._checked = 0.0

    def get(self, name: str) -> Topic | None:
        """The cached topic, or None (a plain dict read: atomic, no lock needed)."""
        return self._topics.get(name)

    def put(self, topic: Topic, version: bytes | str | None) -> None:
        """Remember a topic read at this route version. Every cached topic was read at the
        same version: a newer one forgets the others, and a topic read at another version
        than the newest seen is not kept (it may predate a change)."""
        with self._lock:
            if version != self._version:
                if _version_number(version) < _version_number(self._version):
                    return
                self._topics.clear()
                self._version = version
            self._topics[topic.name] = topic

    def drop(self, name: str) -> None:
        """Forget one topic."""
        with self._lock:
            self._topics.pop(name, None)

    def clear(self) -> None:
        """Forget every topic."""
        with self._lock:
            self._topics.clear()

    def fresh(self) -> bool:
        """Whether the route version was read within the last REFRESH_INTERVAL seconds."""
        return time.monotonic() - self._checked < REFRESH_INTERVAL

    def check_due(self) -> bool:
        """Whether the route version should be read again now (and mark it as read)."""
        now = time.monotonic()
        if now - self._checked < REFRESH_INTERVAL:
            return False
        self._checked = now
        return True

    def seen(self, version: bytes | str | None) -> None:
        """The route version just read: forget every topic if it changed."""
        with self._lock:
            if version != self._version:
                self._topics.clear()
                self._version = version
