"""The connections redismq opens (redismq.urls): how they name themselves, what they ask
a server that is not Redis Enterprise, what they send — on a real local server."""

from __future__ import annotations

import asyncio

import redis


def test_connections_say_they_are_redismq_in_client_list(url: str) -> None:
    """Every connection names redismq (CLIENT SETINFO, Redis 7.2+ and Valkey), so an
    operator sees which clients are ours; the name is made once, not looked up for each
    new connection. (Redis 7.0 has no CLIENT SETINFO: there the connection still works.)"""
    from importlib import metadata

    from redismq.urls import connect, connect_async, driver_info

    expected = f"redis-py(redismq_v{metadata.version('redismq-streams')})"
    sync = connect(url)
    mine = [c for c in sync.client_list() if c["id"] == str(sync.client_id())]
    names_lib = "lib-name" in mine[0]  # the server keeps library names (7.2+)
    assert mine[0].get("lib-name", expected) == expected

    async def lib_name() -> str | None:
        conn = connect_async(url)
        me = str(await conn.client_id())
        [entry] = [c for c in await conn.client_list() if c["id"] == me]
        await conn.aclose()
        return entry.get("lib-name")

    assert asyncio.run(lib_name()) == (expected if names_lib else None)
    assert driver_info() is driver_info() and driver_info().formatted_name == expected
    major, minor = (int(n) for n in sync.info("server")["redis_version"].split(".")[:2])
    assert names_lib == ((major, minor) >= (7, 2))
    sync.close()


def test_a_new_connection_makes_no_error_on_a_server_that_knows_its_commands(url: str) -> None:
    """redis-py asked each new connection for Redis Enterprise's maintenance notifications
    (CLIENT MAINT_NOTIFICATIONS), which open-source Redis and Valkey refuse: a round trip
    and an error in the server's INFO errorstats for every connection redismq opened.
    (Redis 7.0 also refuses the CLIENT SETINFO pair that names the connection: 2 errors.)"""
    from redismq.urls import connect, connect_async

    quiet = redis.Redis.from_url(url, driver_info=None, protocol=2)  # names itself not
    major, minor = (int(n) for n in quiet.info("server")["redis_version"].split(".")[:2])
    setinfo_errors = 0 if (major, minor) >= (7, 2) else 2
    quiet.config_resetstat()
    sync = connect(url)
    sync.ping()

    async def ping() -> None:
        conn = connect_async(url)
        await conn.ping()
        await conn.aclose()

    asyncio.run(ping())
    sync.close()
    errors = quiet.info("errorstats").get("errorstat_ERR", {}).get("count", 0)
    quiet.close()
    assert errors == 2 * setinfo_errors


def test_a_connection_sends_a_strided_memoryview_as_its_bytes(url: str) -> None:
    """A memoryview that is not contiguous (every other byte) is sent as the bytes it
    shows, as redis-py sends it; hiredis alone sends the first bytes of its buffer."""
    from redismq.urls import connect

    sync = connect(url)
    sync.set("strided", memoryview(b"abcdef")[::2])
    sync.rpush("strided-list", b"x", memoryview(bytearray(b"0123"))[1::2])
    assert sync.get("strided") == b"ace"
    assert sync.lrange("strided-list", 0, -1) == [b"x", b"13"]
    sync.delete("strided", "strided-list")
    sync.close()
