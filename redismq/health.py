"""What a client knows of its brokers' health, and the routing rules that follow from it
(placeable, usable, removed), shared by the sync and async routers."""

from __future__ import annotations

import json
import time

DEFAULT_BROKER = "default"
# How long a client avoids a broker after a failed send, for messages that may go elsewhere.
DOWN_FOR = 2.0
# How often a client reads the route version and the brokers' states again.
REFRESH_INTERVAL = 1.0

ACTIVE, DRAINING, DOWN, REMOVED = "active", "draining", "down", "removed"


class BrokerHealth:
    """What a client knows of its brokers, and the routing rules that follow from it,
    shared by the sync and async routers (which only read the records).

    - placeable: new queues go to active brokers (not draining, not down), else anywhere;
    - usable: a send goes to an active broker this client has not found down within the
      last DOWN_FOR seconds;
    - removed: a broker no longer registered (other than the meta Redis itself).
    """

    def __init__(self) -> None:
        self._states: dict[str, str] = {}
        self._read_at = float("-inf")
        self._down: dict[str, float] = {}

    def due(self) -> bool:
        """Whether the states are older than REFRESH_INTERVAL and should be read again."""
        return time.monotonic() - self._read_at > REFRESH_INTERVAL

    def update(self, records: dict[bytes, bytes], health: dict[bytes, bytes]) -> dict[str, str]:
        """Take the registry and health records just read; returns the states."""
        self._states = broker_states(records, health)
        self._read_at = time.monotonic()
        return self._states

    def unreadable(self) -> None:
        """The records could not be read: keep the last states until the next interval."""
        self._read_at = time.monotonic()

    def state(self, name: str) -> str:
        """active, draining, down, or removed (no longer registered), as last read."""
        # The meta Redis itself ("default") holds the queues of single-broker topics.
        return self._states.get(name, ACTIVE if name == DEFAULT_BROKER else REMOVED)

    def usable(self, name: str) -> bool:
        """Whether a send may go to this broker now (writable, not known to be down)."""
        if self._down.get(name, 0.0) > time.monotonic():
            return False
        return self.state(name) == ACTIVE

    def placeable(self, names: list[str]) -> list[str]:
        """The brokers among `names` new queues may go to (all of them if none is active)."""
        return [n for n in names if self._states.get(n, ACTIVE) == ACTIVE] or names

    def mark_down(self, name: str) -> None:
        """Avoid a broker for DOWN_FOR seconds after a send failed to reach it."""
        self._down[name] = time.monotonic() + DOWN_FOR


def broker_states(records: dict[bytes, bytes], health: dict[bytes, bytes]) -> dict[str, str]:
    """Broker name -> active, draining or down, from registry records and health records."""
    states = {}
    for raw_name, raw in records.items():
        name = raw_name.decode()
        state = json.loads(raw).get("state", ACTIVE)
        checked = json.loads(health[raw_name]) if raw_name in health else {}
        states[name] = DOWN if checked.get("up") is False else state
    return states
