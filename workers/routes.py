"""Following route changes while the worker runs."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .housekeeping import Component

if TYPE_CHECKING:
    from .worker import Worker


class RouteWatcher(Component):
    """Follows route changes: the worker starts consuming new queues without a restart."""

    interval = 2.0

    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    def tick(self) -> None:
        self.worker.refresh_routes()
