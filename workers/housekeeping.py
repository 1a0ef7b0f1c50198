"""Background components of a worker process: each runs its duty on its own thread, on its
own interval, so that one slow call (a hung broker) delays nothing but itself."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from redismq import BrokerUnavailable

if TYPE_CHECKING:
    from .loop import Loop

log = logging.getLogger("redismq.worker")
# How long stopping waits for a component's thread (one stuck on a hung broker is left).
JOIN_TIMEOUT = 2.0


class Component:
    """A duty done every `interval` seconds on its own thread: `start()` it, `shutdown()`
    it; `tick()` is the duty, `stop()` the clean-up done once at shutdown."""

    interval: float = 5.0

    def tick(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        """Called once when the worker stops."""

    def start(self, stopping: threading.Event) -> None:
        """Run `tick()` now and then every `interval` seconds until `stopping` is set."""
        self._thread = threading.Thread(
            target=self._run, args=(stopping,), name=type(self).__name__, daemon=True
        )
        self._thread.start()

    def _run(self, stopping: threading.Event) -> None:
        while not stopping.is_set():
            safely(self.tick)
            stopping.wait(self.interval)

    def shutdown(self) -> None:
        """Wait (briefly) for the thread to end, then clean up."""
        thread = getattr(self, "_thread", None)
        if thread is not None:
            thread.join(JOIN_TIMEOUT)
        safely(self.stop)


class Housekeeper:
    """Starts the worker's components and stops them."""

    def __init__(self, components: Sequence[Component]) -> None:
        self.components = list(components)
        self._stopping = threading.Event()

    def start(self) -> None:
        for c in self.components:
            c.start(self._stopping)

    def stop(self) -> None:
        self._stopping.set()
        for c in self.components:
            c.shutdown()


def safely(fn: Callable[[], None]) -> None:
    """Run one step; log (never raise) what goes wrong."""
    try:
        fn()
    except BrokerUnavailable as exc:
        log.error("%s", exc)
    except Exception:
        log.exception("housekeeping step %s failed", getattr(fn, "__qualname__", fn))


class _LoopsOf:
    """The loops of one broker, read afresh at each iteration (loops come and go)."""

    def __init__(self, loops: Sequence[Loop], broker: Any) -> None:
        self._loops = loops
        self._broker = broker

    def __iter__(self) -> Iterator[Loop]:
        return iter([loop for loop in list(self._loops) if loop.broker == self._broker])


class PerBroker(Component):
    """One copy of a duty per broker, each a component on its own thread, so that a broker
    that hangs stalls only its own leases and time limits. New brokers (routes change)
    get theirs within a second."""

    interval = 1.0

    def __init__(self, loops: Sequence[Loop], make: Callable[[Sequence[Loop]], Component]):
        self.loops = loops
        self.make = make
        self.lanes: dict[Any, Component] = {}
        self._stopping: threading.Event | None = None

    def start(self, stopping: threading.Event) -> None:
        self._stopping = stopping
        self.tick()
        super().start(stopping)

    def tick(self) -> None:
        assert self._stopping is not None
        for broker in {loop.broker for loop in list(self.loops)} - self.lanes.keys():
            lane = self.make(_LoopsOf(self.loops, broker))  # type: ignore[arg-type]
            self.lanes[broker] = lane
            lane.start(self._stopping)

    def stop(self) -> None:
        for lane in list(self.lanes.values()):
            lane.shutdown()
