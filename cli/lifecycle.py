"""`redismq group list|delete` and `redismq topic delete`: the life of groups and topics."""

from __future__ import annotations

import json

import click
from rich.table import Table
from rich.text import Text

from redismq import Client
from redismq.cli.common import friendly, out, url_option


@click.group()
def group() -> None:
    """List and delete the consumer groups of a topic."""


@group.command("list")
@click.argument("topic")
@url_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@friendly
def group_list(topic: str, url: str, as_json: bool) -> None:
    """List a topic's groups: pending, lag, retrying, dead and done messages, and whether
    a live worker consumes each.

    Example: redismq group list emails
    """
    rows = Client(url).groups(topic)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        out.print(f"topic {topic} has no group: nothing consumes it")
        return
    table = Table("group", "live", "pending", "lag", "retrying", "dead", "done", title=topic)
    for g in rows:
        live = Text("yes", style="green") if g["live"] else Text("no live consumer", style="red")
        table.add_row(
            g["name"],
            live,
            *(str(g[k]) for k in ("pending", "lag", "retrying", "dead", "done")),
        )
    out.print(table)


@group.command("delete")
@click.argument("topic")
@click.argument("name")
@click.option("--force", is_flag=True, help="Delete even with pending, retrying or dead messages.")
@url_option
@friendly
def group_delete(topic: str, name: str, force: bool, url: str) -> None:
    """Delete a group of a topic: its position, retries, dead letters and done records.
    Refused while it has pending, retrying or dead messages, unless --force. Stop its
    workers first (a running worker registers its group again).

    Example: redismq group delete emails old-mailer
    """
    Client(url).delete_group(topic, name, force=force)
    click.echo(f"group {name} of {topic} deleted")


@click.command("delete")
@click.argument("name")
@click.option("--force", is_flag=True, help="Delete even with unfinished messages.")
@url_option
@friendly
def topic_delete(name: str, force: bool, url: str) -> None:
    """Delete a topic and everything its queues keep. Refused while any message is
    unfinished (undelivered, pending, delayed or retrying), unless --force. A producer
    sending to it afterwards creates it again.

    Example: redismq topic delete old-events
    """
    Client(url).delete_topic(name, force=force)
    click.echo(f"topic {name} deleted")
