"""Messages: their ids, how they are written into a stream entry and read back."""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any, cast
from uuid import UUID

import orjson

from .errors import InvalidMessage

if TYPE_CHECKING:
    from redis.typing import EncodableT, FieldT

DEFAULT_MAX_BODY = 1024 * 1024
_decoder = json.JSONDecoder()
_decode = _decoder.decode
_scan = _decoder.scan_once  # type: ignore[attr-defined]  # set by its __init__, not in typeshed


def _written_as(value: Any) -> Any:
    """What a UUID or an enum member is written as (as orjson writes them); raises
    TypeError for anything else that JSON cannot carry."""
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, Enum):
        return value.value
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


_encode = json.JSONEncoder(
    separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=_written_as
).encode
# orjson writes a body several times faster than `_encode`. Where the two could differ,
# `_encode` decides (and writes a UUID and an enum member as orjson does): orjson refuses
# subclasses of builtin types, datetimes and dataclasses (with these options), integers
# beyond 64 bits and keys that are not str, and writes a NaN as null (so a body with a null
# goes through `_encode` too). Reading is left to the json module: orjson reads integers
# beyond 64 bits as floats.
_ORJSON_OPTIONS = (
    orjson.OPT_PASSTHROUGH_SUBCLASS
    | orjson.OPT_PASSTHROUGH_DATETIME
    | orjson.OPT_PASSTHROUGH_DATACLASS
)

# Stream entry field names.
F_ID = b"id"
F_BODY = b"body"
F_ENC = b"enc"
F_CREATED = b"created"
F_ATTEMPT = b"attempt"
F_KEY = b"key"
F_HEADERS = b"headers"
F_DEDUP = b"dedup"
ENC_RAW = b"raw"

# A stream entry as XRANGE/XREADGROUP return it on our connections (decode_responses off).
StreamEntry = tuple[bytes, dict[bytes, bytes]]


def stream_entries(reply: Any) -> list[StreamEntry]:
    """An XRANGE/XREVRANGE reply, typed as our connections return it (redis-py's types
    allow str and None for every part, as for a decoding or XAUTOCLAIM reply)."""
    return cast(list[StreamEntry], reply)


class _Noise(threading.local):
    """Random bytes from os.urandom, read a few thousand at a time per thread: a system call
    at each send cost more than the rest of the id. A forked child starts afresh (its
    copy of the parent's bytes would repeat the parent's ids)."""

    def __init__(self) -> None:
        self.data, self.at = b"", 0

    def hex(self, size: int) -> str:
        """`size` random bytes not given out before, in hex."""
        if self.at + size > len(self.data):
            self.data, self.at = os.urandom(max(NOISE_READ, size)), 0
        self.at += size
        return self.data[self.at - size : self.at].hex()


NOISE_READ = 4096
_noise = _Noise()


def _forked() -> None:
    global _noise
    _noise = _Noise()


os.register_at_fork(after_in_child=_forked)


def new_message_id() -> str:
    """A globally unique id that sorts by creation time (48-bit ms clock + 80 random bits)."""
    return f"{time.time_ns() // 1_000_000:012x}{_noise.hex(10)}"


def new_message_ids(n: int) -> list[str]:
    """`n` ids as `new_message_id` makes them, of one moment (one clock read)."""
    stamp, noise = f"{time.time_ns() // 1_000_000:012x}", _noise.hex(10 * n)
    return [stamp + noise[i : i + 20] for i in range(0, 20 * n, 20)]


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def encode_body(body: Any, max_body: int = DEFAULT_MAX_BODY) -> tuple[bytes, bool]:
    """Serialise a body: bytes are kept as they are, anything else becomes JSON.

    Returns the bytes and whether they are raw (not JSON).
    """
    if isinstance(body, bytes | bytearray | memoryview):
        data, raw = bytes(body), True
    else:
        try:
            data = dump_json(body)
        except (TypeError, ValueError, RecursionError) as exc:
            raise InvalidMessage(f"body is not JSON-serialisable: {exc}") from None
        raw = False
    if len(data) > max_body:
        raise InvalidMessage(f"body is {len(data)} bytes, over the limit of {max_body} bytes")
    return data, raw


def dump_json(value: Any) -> bytes:
    """`value` as compact UTF-8 JSON, refusing NaN and infinities (raises TypeError or
    ValueError). A UUID is written as its text and an enum member as its value."""
    try:
        data = orjson.dumps(value, option=_ORJSON_OPTIONS)
    except TypeError:  # orjson.JSONEncodeError is one
        return _encode(value).encode()
    return _encode(value).encode() if b"null" in data else data


def entry_fields(
    message_id: str,
    data: bytes,
    raw: bool,
    *,
    key: str | None = None,
    headers: dict[str, str] | None = None,
    created: int | None = None,
    attempt: int = 0,
    dedup_key: str | None = None,
) -> dict[FieldT, EncodableT]:
    """The fields of the stream entry that carries one message."""
    fields: dict[FieldT, EncodableT] = {F_ID: message_id, F_BODY: data}
    if raw:
        fields[F_ENC] = ENC_RAW
    fields[F_CREATED] = created if created is not None else now_ms()
    if attempt:
        fields[F_ATTEMPT] = attempt
    if key is not None:
        fields[F_KEY] = key
    if headers:
        fields[F_HEADERS] = json.dumps(headers, separators=(",", ":"))
    if dedup_key is not None:
        fields[F_DEDUP] = dedup_key
    return fields


@dataclass(slots=True)
class Message:
    """One received message: its identity, where it came from and its decoded body."""

    id: str
    topic: str
    queue: int
    body: Any
    created: int
    attempt: int = 0
    key: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    group: str = ""
    entry_id: str = ""
    from_retry: bool = False
    raw: bytes = b""
    hold_for: float = 0.0
    stepped: bool = False  # a run made effect-once step marks for it (redismq.steps)
    # What the read found of it: "" to run, "done" (completed before), "cancelled"; None
    # when it was not checked yet (the receive checks it).
    verdict: str | None = None
    # The count of takeovers of its queue's group when the read script read it (None: read
    # otherwise, or spent by its first settle); see `QueueKeys.takeovers`.
    takeovers: int | None = None
    dedup_key: str | None = None  # what it was sent with: its steps' keys are made of it

    def fields(self, attempt: int | None = None) -> dict[FieldT, EncodableT]:
        """The stream entry fields that re-create this message (for retry or replay)."""
        is_raw = isinstance(self.body, bytes)
        return entry_fields(
            self.id,
            self.raw,
            is_raw,
            key=self.key,
            headers=self.headers,
            created=self.created,
            attempt=self.attempt if attempt is None else attempt,
            dedup_key=self.dedup_key,
        )


def decode_json(text: str) -> Any:
    """The value of a JSON text, as `json.loads` gives it (and its errors)."""
    # A value alone, without whitespace around it (as bodies are written), is scanned
    # directly: the decoder's own wrapping around its scanner costs as much as a body.
    try:
        value, end = _scan(text, 0)
    except (StopIteration, ValueError, RecursionError):
        return _decode(text)  # raises what json.loads raises
    return value if end == len(text) else _decode(text)


def decode_flat(topic: str, queue: int, entry_id: bytes, flat: list[bytes]) -> Message:
    """`decode_entry` of an entry's field/value list (as a script returns it)."""
    if len(flat) == 6 and flat[0] == F_ID and flat[2] == F_BODY and flat[4] == F_CREATED:
        _, mid, _, raw, _, created = flat
        try:  # a plain message (no encoding, attempt, key or headers): nothing else to see
            message_id = mid.decode()
            if message_id:
                body = decode_json(raw.decode())
                # All positional (up to `raw`): keyword arguments double the cost of a
                # dataclass's __init__.
                return Message(
                    message_id,
                    topic,
                    queue,
                    body,
                    int(created),
                    0,  # attempt
                    None,  # key
                    {},  # headers
                    "",  # group
                    entry_id.decode(),
                    False,  # from_retry
                    raw,
                )
        except (ValueError, RecursionError):
            pass  # decode_entry says what is wrong
    return decode_entry(topic, queue, entry_id, entry_dict(flat))


def entry_dict(flat: list[bytes]) -> dict[bytes, bytes]:
    """An entry's field/value list as a dict."""
    return dict(zip(flat[::2], flat[1::2], strict=True))


def decode_entry(
    topic: str, queue: int, entry_id: bytes, fields: dict[bytes, bytes] | None
) -> Message:
    """Turn a stream entry into a Message; raise InvalidMessage saying what is wrong."""
    eid = entry_id.decode()
    if not fields:
        raise InvalidMessage(f"entry {eid} has no fields")
    try:
        mid = fields[F_ID].decode()
        raw = fields[F_BODY]
    except KeyError as exc:
        raise InvalidMessage(f"entry {eid} lacks the field {exc.args[0].decode()!r}") from None
    except UnicodeDecodeError:
        raise InvalidMessage(f"entry {eid} has an id that is not UTF-8") from None
    if not mid:
        raise InvalidMessage(f"entry {eid} has an empty id")
    if fields.get(F_ENC) == ENC_RAW:
        body: Any = raw
    else:
        try:
            body = decode_json(raw.decode())  # ValueError covers invalid UTF-8 too
        except (ValueError, RecursionError) as exc:
            raise InvalidMessage(f"message {mid}: body is not valid JSON ({exc})") from None
    try:
        created = int(fields.get(F_CREATED, 0))
        attempt = int(fields.get(F_ATTEMPT, 0))
        key = fields[F_KEY].decode() if F_KEY in fields else None
        headers = json.loads(fields[F_HEADERS]) if F_HEADERS in fields else {}
        dedup_key = fields[F_DEDUP].decode() if F_DEDUP in fields else None
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise InvalidMessage(f"message {mid}: malformed metadata ({exc})") from None
    if not isinstance(headers, dict):
        raise InvalidMessage(f"message {mid}: headers are not an object")
    return Message(
        id=mid,
        topic=topic,
        queue=queue,
        body=body,
        created=created,
        attempt=attempt,
        key=key,
        headers=headers,
        entry_id=eid,
        raw=raw,
        dedup_key=dedup_key,
    )
