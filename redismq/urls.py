"""Broker URLs: checked, masked for display, and turned into redis-py clients (sync or asyncio).

Forms: ``redis://[user:password@]host:port[/db]``, ``rediss://`` (TLS), ``unix://path``,
``sentinel://[user:password@]h1:26379,h2:26379/mastername`` (a master Sentinel follows), and
``cluster://[user:password@]h1:7000,h2:7001`` (seed nodes of a Redis Cluster; the whole
cluster is one broker), or ``clusters://`` for a cluster over TLS.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from functools import cache
from importlib import metadata
from typing import Any
from urllib.parse import unquote, urlsplit

import redis
from redis.asyncio import Redis as AsyncRedis
from redis.asyncio.cluster import ClusterNode as AsyncClusterNode
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.asyncio.retry import Retry as AsyncRetry
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.backoff import ExponentialBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.connection import HiredisRespSerializer
from redis.driver_info import DriverInfo
from redis.maint_notifications import MaintNotificationsConfig
from redis.retry import Retry
from redis.sentinel import Sentinel
from redis.utils import HIREDIS_AVAILABLE

from .errors import InvalidURL

SCHEMES = ("redis", "rediss", "unix", "sentinel", "cluster", "clusters")
CLUSTER_SCHEMES = ("cluster", "clusters")
# What `Client()`, `App()` and every command use when no URL and no $REDISMQ_URL is given.
DEFAULT_URL = "redis://127.0.0.1:6379/0"
SOCKET_TIMEOUT = 30.0
MAX_CONNECTIONS = 10_000


def mask_url(url: str) -> str:
    """The URL with its password replaced by ``***``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<invalid url>"
    if parts.password is None and "password=" not in parts.query:
        return url
    if "password=" in parts.query:
        query = "&".join(
            "password=***" if q.startswith("password=") else q for q in parts.query.split("&")
        )
        parts = parts._replace(query=query)
    if parts.password is None:
        return parts.geturl()
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
        if parts.scheme in CLUSTER_SCHEMES:
            _cluster_parts(url)
            return url
        if not parts.hostname:
            raise InvalidURL(f"no host in {mask_url(url)!r}")
        _ = parts.port  # raises ValueError on a bad port
        db = parts.path.strip("/")
        if db and not db.isdigit():
            raise InvalidURL(f"database must be a number in {mask_url(url)!r}, not {db!r}")
    except InvalidURL:
        raise
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
            f"a Sentinel URL looks like sentinel://host1:26379,host2:26379/mymaster, "
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


def is_cluster_url(url: str | None) -> bool:
    """Whether the URL names a Redis Cluster (``cluster://`` or ``clusters://``)."""
    return bool(url) and urlsplit(url).scheme in CLUSTER_SCHEMES


def _cluster_parts(url: str) -> tuple[list[tuple[str, int]], dict[str, Any]]:
    """Seed node addresses and connection options of a cluster:// URL."""
    parts = urlsplit(url)
    hosts = parts.netloc.rsplit("@", 1)[-1]
    if not hosts or parts.path.strip("/"):
        raise InvalidURL(
            f"a Redis Cluster URL looks like cluster://host1:7000,host2:7001 (seed nodes; "
            f"no database), not {mask_url(url)!r}"
        )
    addresses = []
    for hp in hosts.split(","):
        host, _, port = hp.rpartition(":")
        if not host or not port.isdigit():
            raise InvalidURL(f"bad cluster node address {hp!r} in {mask_url(url)!r}")
        addresses.append((host, int(port)))
    opts: dict[str, Any] = {}
    if parts.password is not None:
        opts["password"] = unquote(parts.password)
    if parts.username:
        opts["username"] = unquote(parts.username)
    if parts.scheme == "clusters":
        opts["ssl"] = True
    return addresses, opts


@cache
def driver_info() -> DriverInfo:
    """What redismq's connections tell the server they are (CLIENT SETINFO, seen in CLIENT
    LIST): `redis-py(redismq_v<version>)`. Made once: redis-py otherwise looks its own
    version up in the installed packages for every new connection."""
    try:
        version = metadata.version("redismq-streams")
    except metadata.PackageNotFoundError:
        version = "0"
    return DriverInfo().add_upstream_driver("redismq", version)


# True while a send's write is in flight (see `no_resend_on_timeout`).
_SENDING: ContextVar[bool] = ContextVar("redismq_sending", default=False)


class no_resend_on_timeout:  # noqa: N801 - used as a function: `with no_resend_on_timeout():`
    """Within it, a command whose reply did not come within the socket timeout is raised,
    not sent again by redis-py: the server may have run it, and a copy sent that late can
    come after the record that makes it a no-op expired. (After a broken connection
    redis-py still sends it again at once: the record covers that.) A class, not a
    generator: every send enters it, and a generator's context manager cost a send 1 µs."""

    __slots__ = ("_token",)

    def __enter__(self) -> None:
        self._token = _SENDING.set(True)

    def __exit__(self, *exc: object) -> None:
        _SENDING.reset(self._token)


def _but_a_password(is_retryable: Callable[[Exception], bool] | None) -> Callable[..., bool]:
    """`is_retryable` (None: every error redis-py retries), except an answer about the
    password (it would be the same: redis-py's AuthenticationError is a ConnectionError)
    and a send's timeout (`no_resend_on_timeout`)."""

    def retryable(error: Exception) -> bool:
        if isinstance(error, redis.AuthenticationError):
            return False
        if isinstance(error, redis.TimeoutError) and _SENDING.get():
            return False
        return is_retryable is None or is_retryable(error)

    return retryable


class ConnectionRetry(Retry):
    """redis-py's Retry, without trying again a refused or missing password."""

    # redis-py passes `with_failure_count` by name (in **kw)
    def call_with_retry(self, do: Any, fail: Any, is_retryable: Any = None, **kw: Any) -> Any:  # type: ignore[override]
        return super().call_with_retry(do, fail, _but_a_password(is_retryable), **kw)


class AsyncConnectionRetry(AsyncRetry):
    """redis-py's asyncio Retry, without trying again a refused or missing password."""

    async def call_with_retry(self, do: Any, fail: Any, is_retryable: Any = None, **kw: Any) -> Any:  # type: ignore[override]
        return await super().call_with_retry(do, fail, _but_a_password(is_retryable), **kw)


def connection_options(
    socket_timeout: float,
    retry_class: type[ConnectionRetry] | type[AsyncConnectionRetry] = ConnectionRetry,
) -> dict[str, Any]:
    """The options every redismq connection uses: timeouts and bounded reconnect retries."""
    return {
        "socket_connect_timeout": min(5.0, socket_timeout),
        "socket_timeout": socket_timeout,
        "retry": retry_class(ExponentialBackoff(cap=1.0, base=0.05), 3),
        "retry_on_error": [redis.ConnectionError, redis.TimeoutError],
        "health_check_interval": 30,
        # redis-py's default of 100 is less than a worker's threads can use at once.
        "max_connections": MAX_CONNECTIONS,
        "driver_info": driver_info(),
        # Maintenance notifications are Redis Enterprise's: open-source Redis and Valkey
        # refuse the command redis-py would send on each new connection (an error each).
        "maint_notifications_config": MaintNotificationsConfig(enabled=False),
    }


class CommandPacker(HiredisRespSerializer):
    """redis-py's packing of a command by hiredis, without its pass over every argument
    (which turns a bytearray or memoryview into bytes) when the command needs none: for
    a settle call's hundreds of arguments, that pass cost as much as the packing."""

    def pack(self, *args: Any) -> list[bytes]:
        name = args[0]
        # one word: nothing to split; no memoryview: hiredis packs one that is not
        # contiguous as the first bytes of its buffer (redis-py sends bytes(view))
        if isinstance(name, str) and name.isalpha() and memoryview not in map(type, args):
            try:
                return [hiredis.pack_command(args)]
            except TypeError:
                pass  # what cannot be sent: redis-py's way (its error)
        return super().pack(*args)


# Where redis-py packs commands with hiredis, ours does (a client of a Redis Cluster
# takes no packer: it keeps redis-py's).
PACKER: dict[str, Any] = {}
if HIREDIS_AVAILABLE:
    import hiredis

    if hasattr(hiredis, "pack_command"):
        PACKER["command_packer"] = CommandPacker()


def connect(url: str, *, socket_timeout: float = SOCKET_TIMEOUT) -> redis.Redis:
    """A redis-py client for the URL, with bounded reconnect retries."""
    check_url(url)
    common = connection_options(socket_timeout)
    if url.startswith("sentinel://"):
        addresses, name, opts = _sentinel_parts(url)
        sentinel = Sentinel(addresses, sentinel_kwargs=dict(opts), **opts, **common, **PACKER)
        return sentinel.master_for(name)
    if is_cluster_url(url):
        nodes, opts = _cluster_parts(url)
        return RedisCluster(  # type: ignore[return-value]
            startup_nodes=[ClusterNode(h, p) for h, p in nodes], **opts, **common
        )
    return redis.Redis.from_url(url, **common, **PACKER)


def connect_async(url: str, *, socket_timeout: float = SOCKET_TIMEOUT) -> AsyncRedis:
    """A redis.asyncio client for the URL, with the same options as `connect`."""
    check_url(url)
    common = connection_options(socket_timeout, AsyncConnectionRetry)
    if url.startswith("sentinel://"):
        addresses, name, opts = _sentinel_parts(url)
        sentinel = AsyncSentinel(addresses, sentinel_kwargs=dict(opts), **opts, **common)
        return sentinel.master_for(name)
    if is_cluster_url(url):
        nodes, opts = _cluster_parts(url)
        return AsyncRedisCluster(  # type: ignore[return-value]
            startup_nodes=[AsyncClusterNode(h, p) for h, p in nodes], **opts, **common
        )
    return AsyncRedis.from_url(url, **common)
