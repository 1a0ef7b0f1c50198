"""Broker URLs: checked, masked for display, and turned into redis-py clients."""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel

from .errors import InvalidURL

SCHEMES = ("redis", "rediss", "unix", "sentinel")
SOCKET_TIMEOUT = 30.0


def mask_url(url: str) -> str:
    """The URL with its password replaced by ``***``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<invalid url>"
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rsplit("@", 1)[1]
    return parts._replace(netloc=f"{user}:***@{host}").geturl()


def check_url(url: str) -> str:
    """Return the URL if it is usable, else raise InvalidURL saying why."""
    if not isinstance(url, str) or not url.strip():
        raise InvalidURL("no Redis URL given (pass --url or set REDISMQ_URL)")
    try:
        parts = urlsplit(url)
        if parts.scheme not in SCHEMES:
            raise InvalidURL(
                f"unsupported URL scheme in {mask_url(url)!r}: use one of "
                + ", ".join(f"{s}://" for s in SCHEMES)
            )
        if parts.scheme == "unix":
            if not parts.path:
                raise InvalidURL(f"no socket path in {mask_url(url)!r}")
            return url
        if parts.scheme == "sentinel":
            _sentinel_parts(url)
            return url
        if not parts.hostname:
            raise InvalidURL(f"no host in {mask_url(url)!r}")
        _ = parts.port  # raises ValueError on a bad port
        db = parts.path.strip("/")
        if db and not db.isdigit():
            raise InvalidURL(f"database must be a number in {mask_url(url)!r}, not {db!r}")
    except ValueError as exc:
        raise InvalidURL(f"malformed URL {mask_url(url)!r}: {exc}") from None
    return url


def _sentinel_parts(url: str) -> tuple[list[tuple[str, int]], str, dict]:
    """Sentinel addresses, master name and connection options of a sentinel:// URL."""
    parts = urlsplit(url)
    hosts = parts.netloc.rsplit("@", 1)[-1]
    name = parts.path.strip("/")
    if not hosts or not name:
        raise InvalidURL(
            f"a Sentinel URL looks like sentinel://h1:26379,h2:26379/mastername, "
            f"not {mask_url(url)!r}"
        )
    addresses = []
    for hp in hosts.split(","):
        host, _, port = hp.rpartition(":")
        if not host or not port.isdigit():
            raise InvalidURL(f"bad Sentinel address {hp!r} in {mask_url(url)!r}")
        addresses.append((host, int(port)))
    opts = {}
    if parts.password is not None:
        opts["password"] = unquote(parts.password)
    if parts.username:
        opts["username"] = unquote(parts.username)
    return addresses, name, opts


def connect(url: str, *, socket_timeout: float = SOCKET_TIMEOUT) -> redis.Redis:
    """A redis-py client for the URL, with bounded reconnect retries."""
    check_url(url)
    common = {
        "socket_connect_timeout": 5.0,
        "socket_timeout": socket_timeout,
        "retry": Retry(ExponentialBackoff(cap=1.0, base=0.05), 3),
        "retry_on_error": [redis.ConnectionError, redis.TimeoutError],
        "health_check_interval": 30,
    }
    if url.startswith("sentinel://"):
        addresses, name, opts = _sentinel_parts(url)
        sentinel = Sentinel(addresses, sentinel_kwargs=dict(opts), **opts, **common)
        return sentinel.master_for(name)
    return redis.Redis.from_url(url, **common)
