"""Task arguments as JSON: datetime, date, time, UUID and Decimal travel in a tagged form
that reads well in redis-cli (``{"$date": "2026-11-30"}``) and arrive as the same types;
anything else that JSON cannot carry is refused before sending, naming the argument."""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import date, datetime, time
from decimal import Decimal, InvalidOperation
from typing import Any
from uuid import UUID

from .errors import InvalidMessage

# Tag -> (type, to text, from text). datetime before date: a datetime is a date.
_TYPES: list[tuple[str, type, Callable[[Any], str], Callable[[str], Any]]] = [
    ("$datetime", datetime, datetime.isoformat, datetime.fromisoformat),
    ("$date", date, date.isoformat, date.fromisoformat),
    ("$time", time, time.isoformat, time.fromisoformat),
    ("$uuid", UUID, str, UUID),
    ("$decimal", Decimal, str, Decimal),
]
_DECODERS = {tag: decode for tag, _, _, decode in _TYPES}
_PLAIN = (str, int, bool, type(None))
_DOLLAR = ord("$")
INSTEAD = (
    "pass JSON values (str, int, float, bool, None, lists, dicts with str keys) or a "
    "datetime, date, time, UUID or Decimal instead, e.g. the object's id"
)


def encode_arguments(args: Any, kwargs: dict[str, Any]) -> tuple[list[Any], dict[str, Any]]:
    """Args and kwargs in their JSON form; raises InvalidMessage naming the first value
    that cannot be sent (`kwargs['user']: User`)."""
    return [_encode(a, f"args[{i}]") for i, a in enumerate(args)], {
        k: _encode(v, f"kwargs[{k!r}]") for k, v in kwargs.items()
    }


def _encode(value: Any, where: str) -> Any:
    if isinstance(value, _PLAIN):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidMessage(f"cannot send {where}: {value!r} is not a JSON number; {INSTEAD}")
        return value
    if isinstance(value, list | tuple):
        return [_encode(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise InvalidMessage(
                    f"cannot send {where}: a dict key {k!r} ({type(k).__name__}) is not a "
                    f"string; {INSTEAD}"
                )
            out[k] = _encode(v, f"{where}[{k!r}]")
        return out
    for tag, kind, to_text, _ in _TYPES:
        if isinstance(value, kind):
            return {tag: to_text(value)}
    raise InvalidMessage(f"cannot send {where}: {type(value).__name__} is not JSON; {INSTEAD}")


def decode_arguments(args: list[Any], kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]]:
    """Args and kwargs with their tagged values turned back into their types."""
    return tuple(_decode(a) for a in args), {k: _decode(v) for k, v in kwargs.items()}


def _decode(value: Any) -> Any:
    if isinstance(value, list):
        return [_decode(v) for v in value]
    if not isinstance(value, dict):
        return value
    if len(value) == 1:
        [(tag, text)] = value.items()
        decode = _DECODERS.get(tag)
        if decode is not None and isinstance(text, str):
            try:
                return decode(text)
            except (ValueError, InvalidOperation):
                return value  # a plain dict that only looks tagged
    return {k: _decode(v) for k, v in value.items()}


def may_be_tagged(raw: bytes) -> bool:
    """Whether a body may hold tagged values (else decoding can be skipped)."""
    # Looking for one byte (an int) is a memchr; for bytes, many times slower.
    return _DOLLAR in raw and b'"$' in raw
