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
    return [encode_value(a, f"args[{i}]") for i, a in enumerate(args)], {
        k: encode_value(v, f"kwargs[{k!r}]") for k, v in kwargs.items()
    }


def refuse(value: Any, where: str, key: bool) -> Any:
    """What `encode_value` does by default with a value JSON cannot carry (`key`: as a
    dict key): refuse it."""
    if key:
        kind = type(value).__name__
        raise InvalidMessage(
            f"cannot send {where}: a dict key {value!r} ({kind}) is not a string; {INSTEAD}"
        )
    if isinstance(value, float):
        raise InvalidMessage(f"cannot send {where}: {value!r} is not a JSON number; {INSTEAD}")
    raise InvalidMessage(f"cannot send {where}: {type(value).__name__} is not JSON; {INSTEAD}")


def encode_value(value: Any, where: str, instead: Callable[[Any, str, bool], Any] = refuse) -> Any:
    """A value in its JSON form (`where` names it); what JSON cannot carry is replaced by
    what `instead(part, where, is_dict_key)` returns for it."""
    if isinstance(value, _PLAIN):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else instead(value, where, False)
    if isinstance(value, list | tuple):
        return [encode_value(v, f"{where}[{i}]", instead) for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {
            k if isinstance(k, str) else instead(k, where, True): encode_value(
                v, f"{where}[{k!r}]", instead
            )
            for k, v in value.items()
        }
    for tag, kind, to_text, _ in _TYPES:
        if isinstance(value, kind):
            return {tag: to_text(value)}
    return instead(value, where, False)


def decode_arguments(args: list[Any], kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]]:
    """Args and kwargs with their tagged values turned back into their types."""
    return tuple(decode_value(a) for a in args), {k: decode_value(v) for k, v in kwargs.items()}


def decode_value(value: Any) -> Any:
    """A value with its tagged parts turned back into their types."""
    if isinstance(value, list):
        return [decode_value(v) for v in value]
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
    return {k: decode_value(v) for k, v in value.items()}


def may_be_tagged(raw: bytes) -> bool:
    """Whether a body may hold tagged values (else decoding can be skipped)."""
    # Looking for one byte (an int) is a memchr; for bytes, many times slower.
    return _DOLLAR in raw and b'"$' in raw
