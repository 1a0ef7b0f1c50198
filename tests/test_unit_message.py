"""Unit tests of redismq.message: body encoding, stream entry round trips, bad entries, ids."""

from __future__ import annotations

import dataclasses
import datetime
import enum
import json
import re
import uuid
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from redismq.errors import InvalidMessage
from redismq.message import (
    DEFAULT_MAX_BODY,
    F_ATTEMPT,
    F_BODY,
    F_CREATED,
    F_DEDUP,
    F_ENC,
    F_HEADERS,
    F_ID,
    F_KEY,
    Message,
    decode_entry,
    decode_flat,
    decode_json,
    encode_body,
    entry_fields,
    new_message_id,
    new_message_ids,
)


class Color(enum.Enum):
    RED = 1


class Nothing(enum.Enum):
    NONE = None


@dataclasses.dataclass
class Point:
    x: int
    y: int


# Text that Redis (and UTF-8) can carry: no lone surrogates.
TEXT = st.text(st.characters(codec="utf-8"), max_size=30)
JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | TEXT
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(TEXT, children, max_size=5),
    max_leaves=20,
)


def as_redis(fields: dict) -> dict[bytes, bytes]:
    """What Redis hands back for fields written with redis-py: every name and value as bytes."""

    def b(v: bytes | str | int | float) -> bytes:
        if isinstance(v, bytes):
            return v
        if isinstance(v, str):
            return v.encode()
        return str(v).encode()

    return {b(k): b(v) for k, v in fields.items()}


def good_entry() -> dict[bytes, bytes]:
    return {F_ID: b"m1", F_BODY: b'{"a":1}', F_CREATED: b"1700000000000"}


# -- encode_body ---------------------------------------------------------------------------


class TestEncodeBody:
    def test_json_is_compact_and_utf8(self) -> None:
        data, raw = encode_body({"name": "Zoë", "n": [1, 2]})
        assert raw is False
        assert data == '{"name":"Zoë","n":[1,2]}'.encode()
        assert json.loads(data) == {"name": "Zoë", "n": [1, 2]}

    @pytest.mark.parametrize("body", [None, 0, -1.5, "", "text", True, [], {}])
    def test_json_scalars_and_empties(self, body: object) -> None:
        data, raw = encode_body(body)
        assert raw is False
        assert json.loads(data) == body

    @pytest.mark.parametrize(
        "body", [b"\x00\xff\xfe binary", bytearray(b"\x01\x02"), memoryview(b"mv"), b""]
    )
    def test_bytes_are_kept_raw(self, body: bytes | bytearray | memoryview) -> None:
        data, raw = encode_body(body)
        assert raw is True
        assert type(data) is bytes
        assert data == bytes(body)

    @pytest.mark.parametrize(
        ("body", "type_name"),
        [({1, 2}, "set"), (object(), "object"), ({"when": 1j}, "complex")],
    )
    def test_not_serialisable(self, body: object, type_name: str) -> None:
        with pytest.raises(InvalidMessage, match="not JSON-serialisable") as info:
            encode_body(body)
        assert type_name in str(info.value)
        assert "\n" not in str(info.value)

    @settings(max_examples=300, deadline=None, database=None)
    @given(body=JSON_VALUES)
    def test_json_reads_back_as_the_json_module_writes_it(self, body: object) -> None:
        data, raw = encode_body(body)
        expected = json.dumps(body, separators=(",", ":"), ensure_ascii=False)
        assert raw is False
        assert json.loads(data) == json.loads(expected)

    @pytest.mark.parametrize(
        ("body", "written"),
        [
            ({"n": 2**70}, b'{"n":1180591620717411303424}'),  # beyond orjson's 64 bits
            ({1: "a", None: "b"}, b'{"1":"a","null":"b"}'),  # keys as the json module writes them
            ({"s": type("S", (str,), {})("x")}, b'{"s":"x"}'),  # a subclass of str
            ({"v": None, "text": "null"}, b'{"v":null,"text":"null"}'),
        ],
    )
    def test_values_orjson_leaves_are_written_by_the_json_module(
        self, body: object, written: bytes
    ) -> None:
        assert encode_body(body) == (written, False)

    @pytest.mark.parametrize("number", [float("nan"), float("inf"), -float("inf")])
    def test_nan_and_infinities_are_refused(self, number: float) -> None:
        with pytest.raises(InvalidMessage, match="not JSON-serialisable"):
            encode_body({"x": [1, number]})

    @pytest.mark.parametrize("body", [datetime.datetime(2026, 12, 1), Point(1, 2)])
    def test_datetimes_and_dataclasses_are_refused_as_before(self, body: object) -> None:
        with pytest.raises(InvalidMessage, match="not JSON-serialisable"):
            encode_body({"x": body})

    def test_a_uuid_is_written_as_its_text_and_an_enum_member_as_its_value(self) -> None:
        the_id = uuid.UUID("12345678-1234-5678-1234-567812345678")
        data, _ = encode_body({"id": the_id, "color": Color.RED})
        assert json.loads(data) == {"id": str(the_id), "color": 1}

    @pytest.mark.parametrize(
        "rest", [{"parent": None}, {"note": "annulled"}, {"n": 2**70}, {"k": {1: "a"}}]
    )
    def test_a_uuid_or_enum_member_is_written_whatever_else_the_body_holds(
        self, rest: dict
    ) -> None:
        the_id = uuid.UUID("12345678-1234-5678-1234-567812345678")
        data, _ = encode_body({"id": the_id, "color": Color.RED, "none": Nothing.NONE, **rest})
        assert json.loads(data) == json.loads(
            json.dumps({"id": str(the_id), "color": 1, "none": None, **rest})
        )

    def test_circular_reference(self) -> None:
        body: list = []
        body.append(body)
        with pytest.raises(InvalidMessage, match="not JSON-serialisable"):
            encode_body(body)

    def test_lone_surrogate_is_invalid_message(self) -> None:
        with pytest.raises(InvalidMessage, match="not JSON-serialisable"):
            encode_body({"s": "\ud800"})

    def test_deep_nesting_is_invalid_message(self) -> None:
        body: list = []
        for _ in range(100_000):
            body = [body]
        with pytest.raises(InvalidMessage, match="not JSON-serialisable"):
            encode_body(body)

    def test_moderate_nesting_is_fine(self) -> None:
        body: list = []
        for _ in range(50):
            body = [body]
        data, _ = encode_body(body)
        assert data == b"[" * 51 + b"]" * 51

    def test_over_max_body_json(self) -> None:
        with pytest.raises(InvalidMessage, match=r"body is 12 bytes, over the limit of 10 bytes"):
            encode_body("x" * 10, max_body=10)  # '"xxxxxxxxxx"' is 12 bytes

    def test_over_max_body_raw(self) -> None:
        with pytest.raises(InvalidMessage, match="over the limit of 4 bytes"):
            encode_body(b"12345", max_body=4)

    def test_exactly_max_body_is_fine(self) -> None:
        assert encode_body(b"1234", max_body=4) == (b"1234", True)

    def test_limit_counts_bytes_not_characters(self) -> None:
        # "é" is one character but two UTF-8 bytes: '"éé"' is 6 bytes.
        with pytest.raises(InvalidMessage, match="body is 6 bytes"):
            encode_body("éé", max_body=5)

    def test_default_limit(self) -> None:
        encode_body(b"x" * DEFAULT_MAX_BODY)
        with pytest.raises(InvalidMessage):
            encode_body(b"x" * (DEFAULT_MAX_BODY + 1))


# -- round trips -----------------------------------------------------------------------------

KEYS = st.none() | TEXT
HEADERS = st.none() | st.dictionaries(TEXT, TEXT, max_size=4)
ATTEMPTS = st.integers(min_value=0, max_value=10_000)
CREATED = st.integers(min_value=0, max_value=2**48)


class TestRoundTrip:
    @settings(max_examples=100, deadline=None, database=None)
    @given(
        body=JSON_VALUES,
        key=KEYS,
        headers=HEADERS,
        attempt=ATTEMPTS,
        created=CREATED,
        dedup=KEYS,
    )
    def test_json_bodies(
        self,
        body: object,
        key: str | None,
        headers: dict | None,
        attempt: int,
        created: int,
        dedup: str | None,
    ) -> None:
        mid = new_message_id()
        data, raw = encode_body(body)
        fields = entry_fields(
            mid,
            data,
            raw,
            key=key,
            headers=headers,
            created=created,
            attempt=attempt,
            dedup_key=dedup,
        )
        msg = decode_entry("topic", 3, b"1-1", as_redis(fields))
        assert msg.id == mid
        assert msg.body == body
        assert msg.key == key
        assert msg.headers == (headers or {})
        assert msg.attempt == attempt
        assert msg.created == created
        assert msg.dedup_key == dedup
        assert (msg.topic, msg.queue, msg.entry_id) == ("topic", 3, "1-1")
        assert msg.raw == data
        assert F_ENC not in fields

    @settings(max_examples=100, deadline=None, database=None)
    @given(body=st.binary(max_size=200), key=KEYS, headers=HEADERS, attempt=ATTEMPTS)
    def test_binary_bodies(
        self, body: bytes, key: str | None, headers: dict | None, attempt: int
    ) -> None:
        data, raw = encode_body(body)
        fields = entry_fields("mid", data, raw, key=key, headers=headers, attempt=attempt)
        msg = decode_entry("t", 0, b"5-0", as_redis(fields))
        assert msg.body == body
        assert isinstance(msg.body, bytes)
        assert msg.key == key
        assert msg.headers == (headers or {})
        assert msg.attempt == attempt

    @settings(max_examples=50, deadline=None, database=None)
    @given(body=JSON_VALUES | st.binary(max_size=50), headers=HEADERS, attempt=ATTEMPTS)
    def test_message_fields_recreate_the_entry(
        self, body: object, headers: dict | None, attempt: int
    ) -> None:
        data, raw = encode_body(body)
        fields = entry_fields("m", data, raw, key="k", headers=headers, dedup_key="user-7")
        first = decode_entry("t", 0, b"1-0", as_redis(fields))
        again = decode_entry("t", 0, b"2-0", as_redis(first.fields(attempt=attempt)))
        assert again.body == first.body
        assert (again.id, again.key, again.headers, again.created, again.dedup_key) == (
            first.id,
            first.key,
            first.headers,
            first.created,
            "user-7",
        )
        assert again.attempt == attempt
        # Without an explicit attempt the message's own attempt is kept.
        assert decode_entry("t", 0, b"3-0", as_redis(again.fields())).attempt == attempt

    def test_defaults(self) -> None:
        fields = entry_fields("m", b"1", False)
        assert F_ATTEMPT not in fields
        assert F_KEY not in fields
        assert F_HEADERS not in fields
        assert F_DEDUP not in fields
        assert isinstance(fields[F_CREATED], int)
        msg = decode_entry("t", 0, b"1-0", as_redis(fields))
        assert (msg.attempt, msg.key, msg.headers, msg.dedup_key) == (0, None, {}, None)

    def test_empty_key_is_kept(self) -> None:
        msg = decode_entry("t", 0, b"1-0", as_redis(entry_fields("m", b"1", False, key="")))
        assert msg.key == ""

    def test_missing_created_is_zero(self) -> None:
        msg = decode_entry("t", 0, b"1-0", {F_ID: b"m", F_BODY: b"1"})
        assert msg.created == 0

    def test_message_dataclass_defaults(self) -> None:
        m = Message(id="x", topic="t", queue=0, body=None, created=0)
        assert (m.attempt, m.key, m.headers, m.group, m.from_retry) == (0, None, {}, "", False)


# -- bad entries -----------------------------------------------------------------------------


class TestBadEntries:
    @pytest.mark.parametrize("fields", [None, {}])
    def test_no_fields(self, fields: dict | None) -> None:
        with pytest.raises(InvalidMessage, match=r"entry 7-0 has no fields"):
            decode_entry("t", 0, b"7-0", fields)

    def test_missing_id(self) -> None:
        with pytest.raises(InvalidMessage, match=r"entry 7-0 lacks the field 'id'"):
            decode_entry("t", 0, b"7-0", {F_BODY: b"{}"})

    def test_missing_body(self) -> None:
        with pytest.raises(InvalidMessage, match=r"entry 7-0 lacks the field 'body'"):
            decode_entry("t", 0, b"7-0", {F_ID: b"m"})

    def test_id_not_utf8(self) -> None:
        with pytest.raises(InvalidMessage, match=r"entry 7-0 has an id that is not UTF-8"):
            decode_entry("t", 0, b"7-0", {F_ID: b"\xff\xfe", F_BODY: b"{}"})

    @pytest.mark.parametrize("body", [b"{not json", b"", b"\xff\xfe", b"[1,", b"NaNa"])
    def test_invalid_json_body(self, body: bytes) -> None:
        with pytest.raises(InvalidMessage, match=r"message m1: body is not valid JSON"):
            decode_entry("t", 0, b"7-0", good_entry() | {F_BODY: body})

    def test_deeply_nested_body(self) -> None:
        body = b"[" * 100_000 + b"]" * 100_000
        with pytest.raises(InvalidMessage, match="body is not valid JSON"):
            decode_entry("t", 0, b"7-0", good_entry() | {F_BODY: body})

    def test_raw_body_is_not_parsed(self) -> None:
        msg = decode_entry("t", 0, b"7-0", good_entry() | {F_BODY: b"{not json", F_ENC: b"raw"})
        assert msg.body == b"{not json"

    @pytest.mark.parametrize("headers", [b"[1, 2]", b'"text"', b"3", b"null"])
    def test_headers_not_an_object(self, headers: bytes) -> None:
        with pytest.raises(InvalidMessage, match=r"message m1: headers are not an object"):
            decode_entry("t", 0, b"7-0", good_entry() | {F_HEADERS: headers})

    def test_headers_invalid_json(self) -> None:
        with pytest.raises(InvalidMessage, match=r"message m1: malformed metadata"):
            decode_entry("t", 0, b"7-0", good_entry() | {F_HEADERS: b"{oops"})

    def test_deeply_nested_headers(self) -> None:
        headers = b"[" * 100_000 + b"]" * 100_000
        with pytest.raises(InvalidMessage, match="malformed metadata"):
            decode_entry("t", 0, b"7-0", good_entry() | {F_HEADERS: headers})

    @pytest.mark.parametrize("attempt", [b"one", b"1.5", b"", b"\xff"])
    def test_non_integer_attempt(self, attempt: bytes) -> None:
        with pytest.raises(InvalidMessage, match=r"message m1: malformed metadata"):
            decode_entry("t", 0, b"7-0", good_entry() | {F_ATTEMPT: attempt})

    def test_dedup_key_not_utf8(self) -> None:
        with pytest.raises(InvalidMessage, match=r"message m1: malformed metadata"):
            decode_entry("t", 0, b"7-0", good_entry() | {F_DEDUP: b"\xff"})

    def test_non_integer_created(self) -> None:
        with pytest.raises(InvalidMessage, match=r"message m1: malformed metadata"):
            decode_entry("t", 0, b"7-0", good_entry() | {F_CREATED: b"yesterday"})

    def test_key_not_utf8(self) -> None:
        with pytest.raises(InvalidMessage, match=r"message m1: malformed metadata"):
            decode_entry("t", 0, b"7-0", good_entry() | {F_KEY: b"\xc3\x28"})

    def test_errors_are_one_line(self) -> None:
        cases = [
            {F_BODY: b"{}"},
            good_entry() | {F_BODY: b"{\n\n"},
            good_entry() | {F_ATTEMPT: b"x\ny"},
            good_entry() | {F_HEADERS: b"[]"},
        ]
        for fields in cases:
            with pytest.raises(InvalidMessage) as info:
                decode_entry("t", 0, b"7-0", fields)
            assert "\n" not in str(info.value)


# -- field/value lists (the read script's entries) -------------------------------------------


def flat(fields: dict[bytes, bytes]) -> list[bytes]:
    return [part for pair in fields.items() for part in pair]


def decoded_or_error(decode: object, *args: object) -> object:
    try:
        return decode(*args)  # type: ignore[operator]
    except (InvalidMessage, ValueError) as exc:
        return type(exc), str(exc)


class TestDecodeFlat:
    @settings(max_examples=200, deadline=None, database=None)
    @given(body=JSON_VALUES | st.binary(max_size=50), key=KEYS, headers=HEADERS, attempt=ATTEMPTS)
    def test_same_message_as_decode_entry(
        self, body: object, key: str | None, headers: dict | None, attempt: int
    ) -> None:
        data, raw = encode_body(body)
        fields = as_redis(entry_fields("m", data, raw, key=key, headers=headers, attempt=attempt))
        assert decode_flat("t", 2, b"4-0", flat(fields)) == decode_entry("t", 2, b"4-0", fields)

    @pytest.mark.parametrize(
        "fields",
        [
            good_entry() | {F_ID: b""},
            good_entry() | {F_ID: b"\xff\xfe"},
            good_entry() | {F_BODY: b"{not json"},
            good_entry() | {F_BODY: b" {}"},
            good_entry() | {F_BODY: b"{} x"},
            good_entry() | {F_BODY: b""},
            good_entry() | {F_BODY: b"\xff"},
            good_entry() | {F_BODY: b"[" * 100_000 + b"]" * 100_000},
            good_entry() | {F_CREATED: b"yesterday"},
            {F_BODY: b"{}", F_ID: b"m1", F_CREATED: b"1"},
            {F_ID: b"m1", F_CREATED: b"1"},
        ],
    )
    def test_same_error_as_decode_entry(self, fields: dict[bytes, bytes]) -> None:
        assert decoded_or_error(decode_flat, "t", 0, b"7-0", flat(fields)) == decoded_or_error(
            decode_entry, "t", 0, b"7-0", fields
        )

    @pytest.mark.parametrize(
        "text",
        ['{"a":[1,2.5,null]}', " 1 ", "1 2", "", "[", "\ud800", '"\\ud800"', "-Infinity", "-"],
    )
    def test_json_as_json_loads(self, text: str) -> None:
        assert decoded_or_error(decode_json, text) == decoded_or_error(json.loads, text)


# -- ids -------------------------------------------------------------------------------------


class TestMessageId:
    def test_shape(self) -> None:
        mid = new_message_id()
        assert re.fullmatch(r"[0-9a-f]{32}", mid)

    def test_unique(self) -> None:
        ids = {new_message_id() for _ in range(20_000)}
        assert len(ids) == 20_000

    def test_time_prefix(self) -> None:
        with mock.patch("redismq.message.time.time_ns", return_value=1_700_000_000_123_456_789):
            mid = new_message_id()
        assert int(mid[:12], 16) == 1_700_000_000_123

    def test_sorts_by_time(self) -> None:
        clock = iter(range(1_700_000_000_000, 1_700_000_000_000 + 500))
        with mock.patch(
            "redismq.message.time.time_ns", side_effect=lambda: next(clock) * 1_000_000
        ):
            ids = [new_message_id() for _ in range(500)]
        assert ids == sorted(ids)

    def test_sorts_across_epoch_growth(self) -> None:
        # Fixed-width hex: an earlier time never sorts after a later one, even when the
        # later one has more significant digits.
        times = [1, 0xFFF, 0x1000, 1_700_000_000_000, 2**47]
        ids = []
        for t in times:
            with mock.patch("redismq.message.time.time_ns", return_value=t * 1_000_000):
                ids.append(new_message_id())
        assert ids == sorted(ids)

    def test_real_clock_orders_across_milliseconds(self) -> None:
        import time

        first = new_message_id()
        time.sleep(0.002)
        second = new_message_id()
        assert first < second

    def test_a_forked_child_makes_other_ids_than_its_parent(self) -> None:
        """The random part comes from bytes read ahead; a child must not repeat the ones its
        parent will use next."""
        import os

        new_message_id()  # the parent has bytes read ahead
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                os.write(write, ",".join(new_message_id()[12:] for _ in range(50)).encode())
            finally:
                os._exit(0)
        os.close(write)
        child = set(os.read(read, 1 << 16).decode().split(","))
        os.close(read)
        os.waitpid(pid, 0)
        parent = {new_message_id()[12:] for _ in range(50)}
        assert len(child) == 50 and not child & parent

    def test_threads_make_distinct_ids(self) -> None:
        import threading

        made: list[list[str]] = [[] for _ in range(4)]

        def make(into: list[str]) -> None:
            into += [new_message_id() for _ in range(5_000)]

        threads = [threading.Thread(target=make, args=(m,)) for m in made]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len({mid for m in made for mid in m}) == 20_000

    def test_a_batch_s_ids_are_distinct_from_single_ones(self) -> None:
        ids = [new_message_id(), *new_message_ids(300), new_message_id()]
        assert len(set(ids)) == 302 and all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
