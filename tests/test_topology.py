"""Topology changes that keep their state: expand, drain and remove, the route cache."""

from __future__ import annotations

from redismq import Client
from redismq.brokers import expand_topic


def test_a_resend_after_an_expand_finds_the_first_message(client: Client):
    client.create_topic("signup", 2)
    keys = [f"user-{i}" for i in range(20)]
    first = {k: client.send("signup", {"k": k}, dedup_key=k) for k in keys}
    expand_topic(client, "signup", 7)
    assert {k: client.send("signup", {"k": k}, dedup_key=k) for k in keys} == first
    # a keyed message with a dedup key too
    keyed = client.send("signup", {"x": 1}, key="customer-1", dedup_key="order-1")
    expand_topic(client, "signup", 13)
    assert client.send("signup", {"x": 1}, key="customer-1", dedup_key="order-1") == keyed
    other = Client(client.url)  # a client that never saw the topic before the expand
    assert other.send("signup", {"k": "user-3"}, dedup_key="user-3") == first["user-3"]
    other.close()
