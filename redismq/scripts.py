"""The Lua scripts, each loaded once per connection pool and called by SHA."""

from __future__ import annotations

import time
from collections.abc import Sequence
from functools import cache
from importlib import resources
from typing import Any, cast

import redis
from redis.asyncio import Redis as AsyncRedis
from redis.client import Pipeline
from redis.commands.core import Script
from redis.connection import Connection
from redis.exceptions import NoScriptError, ResponseError

from . import cluster

NAMES = (
    "create_topic",
    "add_group",
    "cancel",
    "registry_set",
    "expand_topic",
    "lease",
    "step",
    "purge",
    "send",
    "send_batch",
    "move_due",
    "settle",
    "retry",
    "dead",
    "replay",
    "renew",
    "release",
    "handover",
    "trim",
    "retire_consumer",
    "delete_group",
    "delete_topic",
    "backlog",
    "read",
    "check",
    "woken",
)
# Scripts that use a shared helper besides _pack.lua (put in front of their text).
HELPERS = {
    "send": ("_backlog",),
    "backlog": ("_backlog",),
    "settle": ("_ids", "_sliced"),
    "read": ("_sliced", "_verdicts"),
    "check": ("_sliced", "_verdicts"),
    "woken": ("_sliced", "_verdicts"),
    "trim": ("_ids",),
}


@cache
def source(name: str) -> str:
    """The text of a script, with the shared helpers it uses in front (_pack.lua always)."""
    folder = resources.files("redismq") / "scripts"
    parts = ["_pack", *HELPERS.get(name, ()), name]
    return "\n".join((folder / f"{part}.lua").read_text() for part in parts)


class Scripts:
    """The scripts registered on one Redis client, sync or asyncio (the one registry of
    both): `scripts.settle(keys=..., args=...)` for one call (awaited on an asyncio
    client), `scripts.run([(name, keys, args), ...])` for a pipeline of calls (sync)."""

    def __init__(self, client: redis.Redis | AsyncRedis) -> None:
        self.client = client
        sync = isinstance(client, (redis.Redis, redis.RedisCluster))
        for name in NAMES:
            text = source(name)
            script = SyncScript(client, text) if sync else client.register_script(text)  # type: ignore[arg-type]
            setattr(self, name, script)

    def run(
        self,
        calls: list[tuple[str, list[str], list[Any]]],
        raise_on_error: bool = True,
        on: redis.Redis | None = None,
    ) -> list[Any]:
        """Run script calls in one round trip, by SHA; calls the server did not know the
        script of (a restart, SCRIPT FLUSH) are loaded and run again, the others ran once.
        On a Redis Cluster: one pipeline per master. An error reply is raised, or with
        `raise_on_error=False` returned in its call's place (the other calls did run).
        `on`: a single-connection client of the same server that only the calling thread
        uses (`Broker.sender`), whose connection carries them (`round_trip`)."""
        if cluster.is_cluster(self.client):
            replies = cluster.run_scripts(
                self.client,  # type: ignore[arg-type]
                calls,
                lambda name: getattr(self, name).sha,
                lambda name, keys, args: getattr(self, name)(keys=keys, args=args),
            )
        else:
            replies = self._pipeline(calls, on)
            missing = [i for i, r in enumerate(replies) if isinstance(r, NoScriptError)]
            if missing:
                try:
                    for name in {calls[i][0] for i in missing}:
                        self.load(name, on)
                    again = self._pipeline([calls[i] for i in missing], on)
                except redis.RedisError as exc:  # the replies that came stand (a read's)
                    again = [exc] * len(missing)
                for i, reply in zip(missing, again, strict=True):
                    replies[i] = reply
        for reply in replies if raise_on_error else ():
            if isinstance(reply, Exception):
                raise reply
        return replies

    def load(self, name: str, on: redis.Redis | None = None) -> None:
        """Load a script the server does not know (a restart, SCRIPT FLUSH), on the
        connection of `on` where one said so: after a failover, a held connection and the
        pool's can be on different servers for a while."""
        if on is None:
            self.client.script_load(source(name))
        else:
            load_on(cast(Connection, on.connection), source(name))

    def _pipeline(
        self, calls: list[tuple[str, list[str], list[Any]]], on: redis.Redis | None
    ) -> list[Any]:
        if on is not None:
            commands = [
                ("EVALSHA", getattr(self, name).sha, len(keys), *keys, *args)
                for name, keys, args in calls
            ]
            return round_trip(cast(Connection, on.connection), commands)
        pipe = cast(redis.Redis, self.client).pipeline(transaction=False)  # run() is sync only
        for name, keys, args in calls:
            pipe.evalsha(getattr(self, name).sha, len(keys), *keys, *args)
        return pipe.execute(raise_on_error=False)

    def __getattr__(self, name: str) -> Any:  # for type checkers: attributes are set above
        raise AttributeError(name)


class SyncScript(Script):
    """redis-py's Script on a blocking client, called as it is (by SHA, loaded again when
    the server does not know it) without the import its call makes each time: a send is
    one script call, and that import was a tenth of its client time."""

    def __call__(  # type: ignore[override]
        self,
        keys: Sequence[Any] | None = None,
        args: Sequence[Any] | None = None,
        client: Any = None,
    ) -> Any:
        keys, args = keys or (), args or ()
        client = self.registered_client if client is None else client
        # Not isinstance: Pipeline derives from a typing Protocol (see cluster.is_cluster).
        if Pipeline in type(client).__mro__:  # loaded before the pipeline runs
            client.scripts.add(self)
        try:
            return client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            self.sha = client.script_load(self.script)
            return client.evalsha(self.sha, len(keys), *keys, *args)

    def on_connection(self, client: redis.Redis, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """A call on the connection of a single-connection client that only the calling
        thread uses (a send's: `Broker.sender`), without the client's per-command steps
        (its lock, its observability records, its events): a tenth of a send's time.
        An error reply is raised; a broken connection is handled as `round_trip` does."""
        connection = cast(Connection, client.connection)
        (reply,) = round_trip(connection, [("EVALSHA", self.sha, len(keys), *keys, *args)])
        if isinstance(reply, NoScriptError):
            self.sha = load_on(connection, self.script)
            (reply,) = round_trip(connection, [("EVALSHA", self.sha, len(keys), *keys, *args)])
        if isinstance(reply, Exception):
            raise reply
        return reply


def round_trip(connection: Connection, commands: Sequence[Sequence[Any]]) -> list[Any]:
    """Commands sent together on one connection that only the calling thread uses, and
    their replies in order, an error reply in its command's place (as a pipeline's with
    `raise_on_error=False`), without a pipeline's per-command steps.

    Its own retry sends them again on a new connection when it broke before any reply
    came, as a pipeline would. After a reply came they are not sent again: what came is
    returned with the error in place of the rest (a read's entries, once delivered, would
    not be delivered again). A connection that failed is closed, whatever failed: a held
    connection is never checked for unread replies by the pool (a Sentinel connection
    keeps its socket after a timeout), and the next call would read the late one.

    A connection idle past its health-check interval is checked first (`_checked`)."""

    def attempt() -> list[Any]:
        replies: list[Any] = []
        try:
            _connected(connection)
            _checked(connection)
            packed = connection.pack_commands(commands)
            connection.send_packed_command(packed, check_health=False)
            for _ in commands:
                try:
                    replies.append(connection.read_response())
                except ResponseError as exc:
                    replies.append(exc)
        except BaseException as exc:
            connection.disconnect()
            if not replies or not isinstance(exc, Exception):
                raise
            return replies + [exc] * (len(commands) - len(replies))
        return replies

    return connection.retry.call_with_retry(attempt, lambda _: connection.disconnect())


def load_on(connection: Connection, text: str | bytes | memoryview) -> str:
    """Load a script on a connection that only the calling thread uses, as `round_trip`
    sends commands there; its SHA."""
    (sha,) = round_trip(connection, [("SCRIPT", "LOAD", text)])
    if isinstance(sha, Exception):
        raise sha
    return cast(bytes, sha).decode()


def _checked(connection: Connection) -> None:
    """redis-py's health check of a connection idle past its interval, a PING, in a round
    trip of its own: a broker that hangs is found before anything is written to it (a send
    then goes elsewhere without leaving a copy to run later). Not redis-py's own check:
    when its PING fails, it connects again to the address the connection had, without
    asking Sentinel; here the failure closes the connection, and `_connected` connects it."""
    if connection.health_check_interval and time.monotonic() > connection.next_health_check:
        connection.send_packed_command(connection.pack_command("PING"), check_health=False)
        if connection.read_response() not in (b"PONG", "PONG"):
            raise redis.ConnectionError("the health check's PING had a wrong reply")


def _connected(connection: Connection) -> None:
    """Connect a closed connection. A command sent on one connects it by itself, but to
    the address it had: connect() is what asks Sentinel for the master, and the pool calls
    it only when it hands a connection out, which a held one never is again."""
    if not connection.is_connected:
        connection.connect()
