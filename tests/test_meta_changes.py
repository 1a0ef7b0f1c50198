"""Every change to the meta (topics, routes, groups, brokers) bumps the route version in
the same atomic step, which is how clients learn of it (nothing is published)."""

from __future__ import annotations

from collections.abc import Callable

from redismq import Client
from redismq.brokers import add_broker, drain_broker, expand_topic, remove_broker, undrain_broker
from redismq.server import LocalServer


def test_every_meta_change_bumps_the_route_version(client: Client) -> None:
    def version() -> int:
        return int(client.meta.get(client.router.keys.routes_version) or 0)

    missed = []

    def change(name: str, step: Callable[[], object]) -> None:
        before = version()
        step()
        if version() <= before:
            missed.append(name)

    change("create topic", lambda: client.create_topic("t", 2))
    change("new group", lambda: client.consumer("t", "g").close())
    change("expand topic", lambda: expand_topic(client, "t", 3))
    change("delete group", lambda: client.delete_group("t", "g"))
    change("delete topic", lambda: client.delete_topic("t"))
    with LocalServer() as other:
        change("add broker", lambda: add_broker(client, "b2", other.url))
        change("drain broker", lambda: drain_broker(client, "b2"))
        change("undrain broker", lambda: undrain_broker(client, "b2"))
        change("remove broker", lambda: remove_broker(client, "b2"))
    assert missed == []


def test_a_known_group_does_not_bump_the_route_version(client: Client) -> None:
    client.create_topic("t", 1)
    client.consumer("t", "g").close()
    before = client.meta.get(client.router.keys.routes_version)
    client.consumer("t", "g").close()
    assert client.meta.get(client.router.keys.routes_version) == before
