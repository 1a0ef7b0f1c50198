"""`redismq topic`: create, list, describe, expand and delete topics."""

from __future__ import annotations

import json
from collections import Counter

import click
from rich.table import Table
from rich.text import Text

from redismq import Client
from redismq.cli.common import friendly, out, url_option
from redismq.cli.lifecycle import topic_delete
from redismq.status import describe_topic


@click.group()
def topic() -> None:
    """Create, list, describe and expand topics.

    Example: redismq topic describe emails
    """


@topic.command("create")
@click.argument("name")
@url_option
@click.option("--queues", type=click.IntRange(1, 1024), default=4, show_default=True)
@friendly
def topic_create(name: str, url: str, queues: int) -> None:
    """Create a topic (idempotent).

    Example: redismq topic create emails --queues 8
    """
    t = Client(url).create_topic(name, queues)
    click.echo(f"topic {t.name}: {t.queues} queues")


@topic.command("list")
@url_option
@friendly
def topic_list(url: str) -> None:
    """List topics.

    Example: redismq topic list
    """
    for name in Client(url).topics():
        click.echo(name)


@topic.command("describe")
@click.argument("name")
@url_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@friendly
def topic_describe(name: str, url: str, as_json: bool) -> None:
    """Show each queue of a topic: its broker (and, on a Redis Cluster, the master that
    holds it), the broker's state, the queue's length
    (entries in its stream) and its backlog (messages some group has not finished:
    undelivered, pending, delayed or retrying).

    Example: redismq topic describe emails --json
    """
    info = describe_topic(Client(url), name)
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    table = Table(
        "queue",
        "broker",
        "state",
        "length",
        "backlog",
        title=f"Topic {info['name']}: {len(info['queues'])} queues "
        f"(route version {info['route_version']})",
    )
    for q in info["queues"]:
        state = q["state"] if q["state"] == "active" else f"[red]{q['state']}[/red]"
        length: str | Text
        backlog: str | Text
        if "error" in q:
            length = backlog = Text("unreachable", style="red")
        else:
            length, backlog = str(q["length"]), str(q["backlog"])
        where = f"{q['broker']} ({q['master']})" if q.get("master") else q["broker"]
        table.add_row(str(q["queue"]), Text(where), state, length, backlog)
    out.print(table)


@topic.command("expand")
@click.argument("name")
@click.option(
    "--queues",
    type=click.IntRange(1, 1024),
    required=True,
    help="The new, larger number of queues.",
)
@url_option
@friendly
def topic_expand(name: str, queues: int, url: str) -> None:
    """Give a topic more queues. Existing queues stay where they are (so keyed messages
    already queued keep their order); the new queues are placed on the brokers that take
    new queues. Note that a key may map to another queue afterwards.

    Example: redismq topic expand emails --queues 16
    """
    from redismq.brokers import expand_topic

    client = Client(url)
    with client.errors():
        before = client.topic(name, create=False).queues
    t = expand_topic(client, name, queues)
    placed = Counter(t.placement[before:])
    where = ", ".join(f"{n} on {b}" for b, n in sorted(placed.items()))
    click.echo(f"topic {t.name}: {before} -> {t.queues} queues (new: {where})")


topic.add_command(topic_delete)
