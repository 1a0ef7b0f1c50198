"""redis-py's errors turned into redismq's one-line errors (a connection refused, a wrong
or missing password, a full memory, a missing permission), with the URL's password masked."""

from __future__ import annotations

from typing import Any

import redis

from .errors import BrokerUnavailable
from .urls import mask_url


class redis_errors:  # noqa: N801 - used like the context manager function it replaced
    """Context in which redis-py's connection and permission errors become one-line
    RedisMQErrors (a class, not @contextmanager: it is entered on every send)."""

    __slots__ = ("url",)

    def __init__(self, url: str) -> None:
        self.url = url

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: Any
    ) -> None:
        if exc is None:
            return
        url = mask_url(self.url)
        if isinstance(exc, redis.AuthenticationError) or (
            isinstance(exc, redis.ResponseError) and str(exc).startswith(("NOAUTH", "WRONGPASS"))
        ):
            raise BrokerUnavailable(auth_error(url, exc)) from None
        if isinstance(exc, redis.ConnectionError | redis.TimeoutError):
            raise BrokerUnavailable(f"cannot reach Redis at {url}: {exc}") from None
        if isinstance(exc, redis.exceptions.OutOfMemoryError) or (
            isinstance(exc, redis.ResponseError)
            # (a MULTI refused as a whole says why after this prefix)
            and str(exc).removeprefix("Transaction discarded because of: ").startswith("OOM")
        ):
            raise BrokerUnavailable(f"the broker at {url} is out of memory: {exc}") from None
        if isinstance(exc, redis.exceptions.NoPermissionError) or (
            isinstance(exc, redis.ResponseError)
            # a script's command refused by the ACL says so without the NOPERM prefix (Redis:
            # "The user executing the script can't run…", Valkey: "ACL failure in script")
            and (
                str(exc).startswith(("NOPERM", "ACL failure in script"))
                or "user executing the script can't" in str(exc)
            )
        ):
            raise BrokerUnavailable(f"permission denied at {url}: {exc}") from None


def converted(url: str, exc: BaseException) -> BaseException:
    """The RedisMQError a redis-py error becomes (the error itself if it becomes none)."""
    try:
        with redis_errors(url):
            raise exc
    except BaseException as out:  # noqa: BLE001 - returned, not swallowed
        return out


def auth_error(url: str, exc: BaseException) -> str:
    """One line for a server that wants a password or refused the one given."""
    text = str(exc)
    if "HELLO must be called" in text or "NOAUTH" in text or "required" in text.lower():
        hint = "(put it in the URL: redis://:PASSWORD@host)"
        return f"{url}: the server requires a password {hint}"
    if "invalid username-password" in text or "WRONGPASS" in text or "invalid password" in text:
        return f"{url}: the server refused the password (or user name) of the URL"
    return f"authentication failed at {url}: {text}"
