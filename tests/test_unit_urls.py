"""Unit tests of redismq.urls: URL checking, password masking and command packing (no
connection is made)."""

from __future__ import annotations

import pytest
from redis.connection import HiredisRespSerializer

from redismq.errors import InvalidURL
from redismq.urls import CommandPacker, _sentinel_parts, check_url, mask_url


@pytest.mark.parametrize(
    "url",
    [
        "redis://localhost",
        "redis://localhost:6379",
        "redis://localhost:6379/0",
        "redis://localhost:6379/15",
        "redis://127.0.0.1:6380/",
        "redis://[::1]:6379/0",
        "redis://:secret@host:6379/0",
        "redis://user:secret@host:6379/2",
        "redis://host:6379/0?socket_timeout=5",
        "rediss://host:6380/0",
        "rediss://user:pw@cache.example.com:6380/1?ssl_cert_reqs=none",
        "unix:///tmp/redis.sock",
        "unix:///var/run/redis/redis.sock?db=3",
        "sentinel://h1:26379,h2:26380/mymaster",
        "sentinel://h1:26379/mymaster",
        "sentinel://:pw@h1:26379,h2:26380/mymaster",
    ],
)
def test_check_url_accepts(url: str) -> None:
    assert check_url(url) == url


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("http://host:6379/0", "unsupported URL scheme"),
        ("localhost:6379", "unsupported URL scheme"),
        ("host", "unsupported URL scheme"),
        ("redis-sentinel://h:26379/m", "unsupported URL scheme"),
        ("redis://", "no host"),
        ("redis://:6379/0", "no host"),
        ("redis://:secret@/0", "no host"),
        ("rediss:///0", "no host"),
        ("redis://host:port/0", "malformed URL"),
        ("redis://host:99999/0", "malformed URL"),
        ("redis://host:-1/0", "malformed URL"),
        ("redis://host:6379/zero", "database must be a number"),
        ("redis://host:6379/0/1", "database must be a number"),
        ("unix://", "no socket path"),
        ("sentinel://h1:26379,h2:26380", "sentinel://host1:26379,host2:26379/mymaster"),
        ("sentinel://h1:26379,h2:26380/", "sentinel://host1:26379,host2:26379/mymaster"),
        ("sentinel:///mymaster", "sentinel://host1:26379,host2:26379/mymaster"),
        ("sentinel://h1/mymaster", "bad Sentinel address"),
        ("sentinel://h1:26379,h2:x/mymaster", "bad Sentinel address"),
        ("sentinel://:26379/mymaster", "bad Sentinel address"),
        ("sentinel://h1:26379,/mymaster", "bad Sentinel address"),
    ],
)
def test_check_url_rejects(url: str, words: str) -> None:
    with pytest.raises(InvalidURL, match=words) as info:
        check_url(url)
    message = str(info.value)
    assert "\n" not in message


@pytest.mark.parametrize("url", ["", "   ", None, 6379, b"redis://localhost"])
def test_check_url_nothing_given(url: object) -> None:
    with pytest.raises(InvalidURL, match="no Redis URL given"):
        check_url(url)  # type: ignore[arg-type]


def test_invalid_url_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        check_url("ftp://x")


@pytest.mark.parametrize(
    "url",
    [
        "http://user:hunter2@host/0",
        "redis://user:hunter2@host:port/0",
        "redis://user:hunter2@host:6379/db",
        "redis://:hunter2@/0",
        "sentinel://:hunter2@h1:26379",
        "sentinel://:hunter2@h1/m",
    ],
)
def test_errors_never_show_the_password(url: str) -> None:
    with pytest.raises(InvalidURL) as info:
        check_url(url)
    assert "hunter2" not in str(info.value)
    assert "***" in str(info.value)


@pytest.mark.parametrize("url", ["http://h:1/0", "redis://h:1/x", "sentinel://h1:26379"])
def test_error_names_the_url_once(url: str) -> None:
    with pytest.raises(InvalidURL) as info:
        check_url(url)
    assert str(info.value).count(url) == 1, str(info.value)


def test_sentinel_parts() -> None:
    addresses, name, opts = _sentinel_parts("sentinel://h1:26379,h2:26380/mymaster")
    assert addresses == [("h1", 26379), ("h2", 26380)]
    assert name == "mymaster"
    assert opts == {}


def test_sentinel_parts_with_credentials() -> None:
    addresses, name, opts = _sentinel_parts("sentinel://bob:p%40ss@h1:26379/m")
    assert addresses == [("h1", 26379)]
    assert name == "m"
    assert opts == {"username": "bob", "password": "p@ss"}


# -- mask_url --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("redis://:secret@host:6379/0", "redis://:***@host:6379/0"),
        ("redis://user:secret@host:6379/0", "redis://user:***@host:6379/0"),
        ("rediss://user:secret@host:6380/1?x=1", "rediss://user:***@host:6380/1?x=1"),
        ("redis://user:p@ss@host/0", "redis://user:***@host/0"),
        ("redis://user:@host/0", "redis://user:***@host/0"),
        ("sentinel://:pw@h1:26379,h2:26380/m", "sentinel://:***@h1:26379,h2:26380/m"),
    ],
)
def test_mask_url_hides_password(url: str, masked: str) -> None:
    assert mask_url(url) == masked


@pytest.mark.parametrize(
    "url",
    [
        "redis://host:6379/0",
        "redis://user@host:6379/0",
        "rediss://host/0",
        "unix:///tmp/redis.sock",
        "sentinel://h1:26379,h2:26380/mymaster",
        "not a url",
        "",
    ],
)
def test_mask_url_leaves_others_alone(url: str) -> None:
    assert mask_url(url) == url


def test_mask_url_unparsable() -> None:
    assert mask_url("redis://[::1/0") == "<invalid url>"


def test_mask_url_hides_query_password() -> None:
    assert "secret" not in mask_url("redis://host:6379/0?password=secret")


def packed_or_error(packer: HiredisRespSerializer, command: tuple) -> object:
    try:
        return packer.pack(*command)
    except Exception as exc:
        return type(exc), str(exc)


@pytest.mark.parametrize(
    "command",
    [
        ("EVALSHA", "a" * 40, 2, "k1", "k2", b"v", 0, 1.5, -7, "Zoë", b""),
        ("SET", "k", bytearray(b"ba")),
        ("SET", "k", memoryview(b"mv")),
        ("SET", "k", memoryview(b"abcdef")[::2]),  # not contiguous: hiredis packs "abc"
        ("CLIENT SETNAME", "name"),
        ("CLIENT\tSETNAME", "name"),
        ("FT.SEARCH", "idx", "*"),
        (b"SET", "k", "v"),
        (b"CLIENT SETNAME", "name"),
        ("SET", "k", None),
        ("SET", "k", object()),
        ("",),
    ],
)
def test_command_packer_packs_as_redis_py(command: tuple) -> None:
    assert packed_or_error(CommandPacker(), command) == packed_or_error(
        HiredisRespSerializer(), command
    )
