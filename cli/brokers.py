"""`redismq broker`: register, list, drain, undrain and remove brokers."""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Any

import click
from rich.table import Table
from rich.text import Text

from redismq import Client
from redismq.cli.common import friendly, out, url_option
from redismq.urls import mask_url


@click.group()
def broker() -> None:
    """Register, list, drain and remove brokers (the Redis masters that hold queues).

    Example: redismq broker add b1 redis://10.0.0.5:6379/0 --replica redis://10.0.0.6:6379/0
    """


@broker.command("add")
@click.argument("name")
@click.argument("broker_url", metavar="URL")
@click.option(
    "--replica",
    "replicas",
    multiple=True,
    metavar="URL",
    help="A replica of the broker's master, checked by the NameServer (repeatable).",
)
@url_option
@friendly
def broker_add(name: str, broker_url: str, replicas: tuple[str, ...], url: str) -> None:
    """Register a broker after checking that it answers. URL is redis://, rediss://,
    unix:// or sentinel://HOST:PORT,HOST:PORT/MASTERNAME (follows Sentinel failovers).
    Existing queues stay where they are; new queues may be placed on it.

    Example: redismq broker add b2 sentinel://10.0.0.7:26379,10.0.0.8:26379/b2
    """
    from redismq.brokers import add_broker

    add_broker(Client(url), name, broker_url, list(replicas))
    extra = f" with {len(replicas)} replica(s)" if replicas else ""
    click.echo(f"broker {name} added: {mask_url(broker_url)}{extra}")


@broker.command("list")
@url_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@friendly
def broker_list(url: str, as_json: bool) -> None:
    """List registered brokers with the health the NameServer last recorded: up or
    down, role, current master address, replicas and their lag (bytes of replication
    offset behind the master).

    Example: redismq broker list --json
    """
    from redismq.brokers import list_brokers

    client = Client(url)
    brokers = list_brokers(client)
    if as_json:
        click.echo(json.dumps([b.public() for b in brokers], indent=2))
        return
    if not brokers:
        click.echo(
            f"no brokers registered: the meta Redis ({mask_url(client.url)}) holds every queue"
        )
        return
    table = Table("broker", "state", "up", "role", "master", "replicas", "checked", "url")
    now = time.time()
    for b in brokers:
        h = b.health
        if not h:
            up, role, checked = "?", "", "never"
        else:
            up = "up" if h.get("up") else "[red]down[/red]"
            role = (h.get("master") or {}).get("role") or ""
            checked = f"{max(0.0, now - h.get('checked', now)):.0f}s ago"
        state = b.state if b.state == "active" else f"[yellow]{b.state}[/yellow]"
        table.add_row(
            Text(b.name),
            state,
            up,
            role,
            h.get("address", ""),
            replica_summary(b.replicas, h.get("replicas")),
            checked,
            Text(mask_url(b.url)),
        )
    out.print(table)


def replica_summary(urls: list[str], health: list[dict[str, Any]] | None) -> str:
    """`n/m up, lag x` for a broker's replicas (m registered, n up)."""
    if not urls and not health:
        return "-"
    if health is None:
        return f"{len(urls)} registered"
    up = [r for r in health if r.get("up")]
    lags = [r["lag"] for r in up if "lag" in r]
    lag = f", lag {max(lags)}" if lags else ""
    return f"{len(up)}/{len(health)} up{lag}"


@broker.command("drain")
@click.argument("name")
@url_option
@friendly
def broker_drain(name: str, url: str) -> None:
    """Make a broker's queues read-only: no new sends go there and no new queues are
    placed there; consumers keep emptying them. Then `broker remove` it.

    Example: redismq broker drain b1
    """
    from redismq.brokers import drain_broker

    drain_broker(Client(url), name)
    click.echo(f"broker {name} is draining: no new sends go to it")


@broker.command("undrain")
@click.argument("name")
@url_option
@friendly
def broker_undrain(name: str, url: str) -> None:
    """Let sends and new queues go to a drained broker again.

    Example: redismq broker undrain b1
    """
    from redismq.brokers import undrain_broker

    undrain_broker(Client(url), name)
    click.echo(f"broker {name} is active again")


@broker.command("remove")
@click.argument("name")
@url_option
@friendly
def broker_remove(name: str, url: str) -> None:
    """Unregister a broker. Refused while any of its queues holds a message some group
    has not finished (drain it first and let consumers empty it); its empty queues are
    placed on the remaining brokers.

    Example: redismq broker remove b1
    """
    from redismq.brokers import remove_broker

    client = Client(url)
    with client.errors():
        held = {
            (t, q)
            for t in client.router.topic_names()
            for q, b in enumerate(client.router.topic(t).placement)
            if b == name
        }
    remove_broker(client, name)
    moved = ""
    if held:
        with client.errors():
            to = Counter(client.router.topic(t).placement[q] for t, q in held)
        moved = "; its queues now point to " + ", ".join(
            f"{b} ({n})" for b, n in sorted(to.items())
        )
    click.echo(f"broker {name} removed{moved}")
