"""Unit tests of small helpers: backoff, describe, delay_ms, name and header checks."""

from __future__ import annotations

import json
import math
import threading
import time
from datetime import timedelta
from unittest import mock

import pytest

from redismq.client import check_headers, check_topic_name, delay_ms
from redismq.consumer import MAX_BACKOFF, backoff_delay, describe, encode_result, job_error
from redismq.errors import InvalidMessage

# -- backoff_delay ---------------------------------------------------------------------------


@pytest.mark.parametrize(("attempt", "nominal"), [(0, 2.0), (1, 4.0), (2, 8.0), (5, 64.0)])
def test_backoff_bounds(attempt: int, nominal: float) -> None:
    for _ in range(200):
        d = backoff_delay(2.0, attempt)
        assert 0.5 * nominal <= d <= nominal


def test_backoff_uses_the_jitter_range() -> None:
    with mock.patch("redismq.outcomes.random.uniform", return_value=0.5) as uniform:
        assert backoff_delay(1.0, 3) == 4.0
    uniform.assert_called_once_with(0.5, 1.0)
    with mock.patch("redismq.outcomes.random.uniform", return_value=1.0):
        assert backoff_delay(1.0, 3) == 8.0


def test_backoff_grows_exponentially() -> None:
    with mock.patch("redismq.outcomes.random.uniform", return_value=1.0):
        delays = [backoff_delay(0.5, a) for a in range(8)]
    assert delays == [0.5 * 2**a for a in range(8)]
    for a, b in zip(delays, delays[1:], strict=False):
        assert b == 2 * a


def test_backoff_has_jitter() -> None:
    assert len({backoff_delay(1.0, 4) for _ in range(50)}) > 1


@pytest.mark.parametrize("attempt", [12, 20, 100, 1000])
def test_backoff_is_capped(attempt: int) -> None:
    for _ in range(20):
        d = backoff_delay(1.0, attempt)
        assert MAX_BACKOFF / 2 <= d <= MAX_BACKOFF


def test_backoff_zero() -> None:
    assert backoff_delay(0.0, 5) == 0.0


def test_backoff_capped_for_huge_attempts() -> None:
    assert backoff_delay(1.0, 2000) <= MAX_BACKOFF


# -- describe --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "text"),
    [
        (ValueError("bad value"), "ValueError: bad value"),
        (ValueError(), "ValueError"),
        (RuntimeError("  padded  "), "RuntimeError: padded"),
        (RuntimeError("two\nlines"), "RuntimeError: two lines"),
        (KeyError("k"), "KeyError: 'k'"),
        (TimeoutError(""), "TimeoutError"),
        (KeyboardInterrupt(), "KeyboardInterrupt"),
    ],
)
def test_describe(exc: BaseException, text: str) -> None:
    assert describe(exc) == text


def test_describe_custom_exception() -> None:
    class SmtpDown(Exception):
        pass

    assert describe(SmtpDown("no route\r\nto host")) == "SmtpDown: no route\r to host"


def test_job_error_splits_type_and_message() -> None:
    record = json.loads(job_error("ValueError: bad: worse"))
    assert record.pop("at") > 1_700_000_000_000  # when, in ms
    assert record == {"type": "ValueError", "message": "bad: worse"}


def test_encode_result() -> None:
    assert encode_result({"a": [1, "é"]}) == '{"a":[1,"é"]}'
    assert encode_result(None) == "null"
    assert encode_result({1, 2}) == '"{1, 2}"'


# -- delay_ms --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("delay", "ms"),
    [
        (None, 0),
        (0, 0),
        (0.0, 0),
        (1, 1000),
        (1.5, 1500),
        (0.0004, 0),
        (3600, 3_600_000),
        (timedelta(seconds=2, milliseconds=250), 2250),
        (timedelta(0), 0),
        (timedelta(days=1), 86_400_000),
    ],
)
def test_delay_ms(delay: object, ms: int) -> None:
    assert delay_ms(delay) == ms  # type: ignore[arg-type]


@pytest.mark.parametrize("delay", [-1, -0.001, timedelta(seconds=-1)])
def test_delay_ms_negative(delay: object) -> None:
    with pytest.raises(InvalidMessage, match="must not be negative"):
        delay_ms(delay)  # type: ignore[arg-type]


@pytest.mark.parametrize("delay", [math.nan, True, False, "5", b"5", [1], object()])
def test_delay_ms_not_a_number(delay: object) -> None:
    with pytest.raises(InvalidMessage, match="delay must be a finite number of seconds"):
        delay_ms(delay)  # type: ignore[arg-type]


def test_delay_ms_infinite() -> None:
    with pytest.raises(InvalidMessage):
        delay_ms(math.inf)


# -- check_topic_name ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["orders", "email.welcome", "a", "x" * 200, "with-dash_and.dot", "Zoë", "名前"]
)
def test_check_topic_name_ok(name: str) -> None:
    check_topic_name(name)


@pytest.mark.parametrize("name", ["", "x" * 201, None, 5, b"orders"])
def test_check_topic_name_empty_long_or_not_str(name: object) -> None:
    with pytest.raises(InvalidMessage, match="non-empty string of up to 200 characters"):
        check_topic_name(name)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "bad"),
    [
        ("a{b", "{"),
        ("a}b", "}"),
        ("a#1", "#"),
        ("rmq:x", ":"),
        ("two words", " "),
        ("tab\there", "\t"),
        ("line\nbreak", "\n"),
        ("cr\rhere", "\r"),
    ],
)
def test_check_topic_name_bad_characters(name: str, bad: str) -> None:
    with pytest.raises(InvalidMessage, match="must not contain") as info:
        check_topic_name(name)
    assert repr(bad)[1:-1] in str(info.value)


# -- check_headers ---------------------------------------------------------------------------


def test_check_headers() -> None:
    check_headers(None)
    check_headers({})
    check_headers({"trace": "abc"})
    for bad in ([("a", "b")], {1: "x"}, "a=b"):
        with pytest.raises(InvalidMessage, match="headers must be a dict of strings to strings"):
            check_headers(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("link", "expected"),
    [
        ("pid:[4026531836]", "box"),  # the host's own pid namespace
        ("pid:[4026532178]", "box/4026532178"),  # a container's
        (OSError("no /proc"), "box"),  # not Linux
    ],
)
def test_a_process_is_named_by_host_and_pid_namespace(monkeypatch, link, expected):
    from redismq import process

    def readlink(path: str) -> str:
        assert path == "/proc/self/ns/pid"
        if isinstance(link, OSError):
            raise link
        return link

    monkeypatch.setattr(process.socket, "gethostname", lambda: "box")
    monkeypatch.setattr(process.os, "readlink", readlink)
    try:
        assert process.host_id.__wrapped__() == expected
    finally:
        process.host_id.cache_clear()


# -- StopEvent ---------------------------------------------------------------------------------


def test_a_stop_event_not_set_waits_its_timeout() -> None:
    from redismq.process import StopEvent

    stop = StopEvent()
    started = time.monotonic()
    assert stop.wait(0.05) is False
    assert time.monotonic() - started >= 0.05
    assert stop.is_set() is False


def test_a_stop_event_wakes_every_waiter_and_stays_set() -> None:
    from redismq.process import StopEvent

    stop = StopEvent()
    woken: list[bool] = []
    waiters = [threading.Thread(target=lambda: woken.append(stop.wait())) for _ in range(3)]
    for t in waiters:
        t.start()
    stop.set()
    stop.set()  # a second signal's handler
    for t in waiters:
        t.join(5)
    assert woken == [True, True, True]
    assert stop.wait(0) is True and stop.wait(10) is True
