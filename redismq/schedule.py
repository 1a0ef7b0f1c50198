"""Periodic schedules: a cron expression or a fixed interval, and the ticks they produce."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from croniter import croniter

from .errors import InvalidMessage


@dataclass(frozen=True, slots=True)
class Schedule:
    """When a periodic task is sent: a cron expression (UTC) or every `interval` seconds."""

    cron: str | None = None
    interval: float | None = None

    @classmethod
    def of(cls, cron: str | None, every: timedelta | float | None) -> Schedule:
        """Check and build a schedule from exactly one of `cron` and `every`."""
        if (cron is None) == (every is None):
            raise InvalidMessage("give a periodic task either a cron expression or every=...")
        if cron is not None:
            if not croniter.is_valid(cron):
                raise InvalidMessage(f"not a valid cron expression: {cron!r}")
            return cls(cron=cron)
        assert every is not None  # exactly one of the two was given
        seconds = every.total_seconds() if isinstance(every, timedelta) else float(every)
        if not seconds > 0:
            raise InvalidMessage(f"every= must be a positive interval, not {every!r}")
        return cls(interval=seconds)

    def last_tick(self, now: float) -> float:
        """The latest tick at or before `now` (Unix seconds)."""
        if self.interval is not None:
            return math.floor(now / self.interval) * self.interval
        start = datetime.fromtimestamp(now, UTC)
        return croniter(self.cron, start + timedelta(microseconds=1)).get_prev(float)

    def __str__(self) -> str:
        return self.cron if self.cron is not None else f"every {self.interval:g}s"
