"""Checks of what a user hands to a client (names, keys, headers, delays): each raises
InvalidMessage with one clear line before anything is sent."""

from __future__ import annotations

import math
from datetime import timedelta

from .errors import InvalidMessage


def delay_ms(delay: float | timedelta | None) -> int:
    """A delay in whole milliseconds; raises InvalidMessage when negative or not a number."""
    if delay is None:
        return 0
    seconds = delay.total_seconds() if isinstance(delay, timedelta) else delay
    if (
        not isinstance(seconds, int | float)
        or isinstance(seconds, bool)
        or not math.isfinite(seconds)
    ):
        raise InvalidMessage(f"delay must be a finite number of seconds, not {delay!r}")
    if seconds < 0:
        raise InvalidMessage(f"delay must not be negative (got {seconds})")
    return int(seconds * 1000)


def check_topic_name(name: str) -> None:
    """Raise InvalidMessage unless the name can be used as a topic or group name."""
    if not isinstance(name, str) or not name or len(name) > 200:
        raise InvalidMessage(f"a name must be a non-empty string of up to 200 characters: {name!r}")
    bad = set("{}#:\n\r\t ") & set(name)
    if bad:
        raise InvalidMessage(f"name {name!r} must not contain {''.join(sorted(bad))!r}")


def check_topic_shape(name: str, queues: int) -> None:
    """Raise InvalidMessage unless a topic of that name and number of queues can be made."""
    check_topic_name(name)
    if not isinstance(queues, int) or not 1 <= queues <= 1024:
        raise InvalidMessage(f"queues must be a whole number from 1 to 1024, not {queues!r}")


def check_key(what: str, value: str | None) -> None:
    """Raise InvalidMessage unless the value is None or a non-empty encodable string."""
    if value is None:
        return
    if not isinstance(value, str) or not value:
        raise InvalidMessage(f"{what} must be a non-empty string, not {value!r}")
    try:
        value.encode()
    except UnicodeEncodeError:
        raise InvalidMessage(f"{what} is not encodable as UTF-8: {value!r}") from None


def check_headers(headers: dict[str, str] | None) -> None:
    """Raise InvalidMessage unless the headers are a dict of strings to strings."""
    if headers is None:
        return
    if not isinstance(headers, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
    ):
        raise InvalidMessage("headers must be a dict of strings to strings")


def check_choice(what: str, value: str, choices: tuple[str, ...]) -> str:
    """The value if it is one of the choices, else InvalidMessage."""
    if value not in choices:
        raise InvalidMessage(f"{what} must be one of {', '.join(choices)}, not {value!r}")
    return value


def check_seconds(what: str, value: float) -> float:
    """The value if it is a finite number of seconds, zero or more, else InvalidMessage."""
    if (
        not isinstance(value, int | float)
        or isinstance(value, bool)
        or not math.isfinite(value)
        or value < 0
    ):
        raise InvalidMessage(f"{what} must be a number of seconds, zero or more, not {value!r}")
    return float(value)
