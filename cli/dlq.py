"""`redismq dlq …`: list, show, replay and purge a group's dead letters."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import click
from rich.table import Table
from rich.text import Text

from redismq import Client, DeadLetter
from redismq.cli.common import friendly, iso, out, url_option, when

# Fields of a dead letter shown on lines of their own (or not at all) by `dlq show`.
SHOWN = ("id", "body", "dead_reason", "dead_attempts", "dead_at", "dead_traceback")
# Stream entry fields that hold a time in milliseconds.
TIMES = ("created",)
# A terminal at least this wide shows `dlq list` as a table (the reason gets 40 columns).
WIDE = 130


@click.group()
def dlq() -> None:
    """List, show, replay and purge dead letters.

    Example: redismq dlq list emails --group mailer
    """


def dlq_selection(verb: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The arguments of a dlq command that acts on a group's dead letters (all, or by id)."""

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        options: list[Callable[[Callable[..., Any]], Callable[..., Any]]] = [
            click.argument("topic"),
            click.option("--group", required=True),
            click.option(
                "--id", "ids", multiple=True, help=f"{verb} only this message id (repeatable)."
            ),
            click.option("--yes", is_flag=True, help="Do not ask for confirmation."),
            url_option,
            friendly,
        ]
        for option in reversed(options):
            fn = option(fn)
        return fn

    return wrap


def public(d: DeadLetter) -> dict[str, Any]:
    """A dead letter for JSON output."""
    return {
        "id": d.id,
        "topic": d.topic,
        "group": d.group,
        "queue": d.queue,
        "attempts": d.attempts,
        "failed_at": iso(d.failed_at),
        "reason": d.reason,
    }


@dlq.command("list")
@click.argument("topic")
@click.option("--group", required=True)
@url_option
@click.option("--count", type=click.IntRange(1), default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts (full ids).")
@friendly
def dlq_list(topic: str, group: str, url: str, count: int, as_json: bool) -> None:
    """List a group's dead letters, oldest first (ids in full, also when piped).

    Example: redismq dlq list emails --group mailer --json
    """
    found = Client(url).dead_letters(topic, group, count=count)
    if as_json:
        click.echo(json.dumps([public(d) for d in found], indent=2))
        return
    if not out.is_terminal or out.width < WIDE:  # piped, or narrow: a line each, unfolded
        click.echo(f"Dead letters of {topic}/{group}: {len(found)}")
        for d in found:
            tries = f"{d.attempts} attempt{'s' if d.attempts != 1 else ''}"
            click.echo(f"{d.id}  queue {d.queue}  {tries}  {when(d.failed_at)}  {d.reason}")
        return
    table = Table(title=f"Dead letters of {topic}/{group}")
    table.add_column("id", no_wrap=True, min_width=max((len(d.id) for d in found), default=2))
    table.add_column("queue")
    table.add_column("attempts")
    table.add_column("failed at", no_wrap=True)
    table.add_column("reason", overflow="fold")
    for d in found:
        table.add_row(d.id, str(d.queue), str(d.attempts), when(d.failed_at), Text(d.reason))
    out.print(table)


@dlq.command("show")
@click.argument("topic")
@click.argument("id_args", metavar="[ID]...", nargs=-1)
@click.option("--group", required=True)
@click.option("--id", "ids", multiple=True, help="Message id (repeatable; or as arguments).")
@url_option
@friendly
def dlq_show(
    topic: str, id_args: tuple[str, ...], group: str, ids: tuple[str, ...], url: str
) -> None:
    """Show dead letters in full: reason, attempts, when, body, every field, traceback.

    Example: redismq dlq show emails 01a2184e91cf93b4e1238c211c8c2567 --group mailer
    """
    wanted = set(id_args) | set(ids)
    if not wanted:
        raise click.UsageError("give at least one id (redismq dlq list shows them)")
    found = [d for d in Client(url).dead_letters(topic, group, count=100_000) if d.id in wanted]
    if not found:
        raise click.UsageError(f"no dead letter of {topic}/{group} has the id(s) given")
    for d in found:
        table = Table("field", "value", title=f"dead letter {d.id}", show_header=False)
        table.add_row("queue", str(d.queue))
        table.add_row("reason", Text(d.reason))
        table.add_row("attempts", str(d.attempts))
        table.add_row("failed at", when(d.failed_at))
        table.add_row(
            "body", Text(json.dumps(d.body) if not isinstance(d.body, bytes) else repr(d.body))
        )
        for name, value in d.fields.items():
            if name in TIMES and value.isdigit():
                table.add_row(name, when(int(value)))
            elif name not in SHOWN:
                table.add_row(name, Text(value))
        out.print(table)
        if d.traceback:
            out.print(Text(d.traceback), soft_wrap=True)


@dlq.command("purge")
@dlq_selection("Purge")
def dlq_purge(topic: str, group: str, ids: tuple[str, ...], yes: bool, url: str) -> None:
    """Delete dead letters for good.

    Example: redismq dlq purge emails --group mailer --yes
    """
    what = f"{len(ids)} dead letter(s)" if ids else "every dead letter"
    if not yes:
        click.confirm(f"Delete {what} of {topic}/{group}?", abort=True)
    n = Client(url).purge_dead_letters(topic, group, ids=ids or None)
    click.echo(f"purged {n}")


@dlq.command("replay")
@dlq_selection("Replay")
def dlq_replay(topic: str, group: str, ids: tuple[str, ...], yes: bool, url: str) -> None:
    """Give dead letters back to their group.

    Example: redismq dlq replay emails --group mailer --yes
    """
    if not yes:
        click.confirm(f"Replay dead letters of {topic}/{group}?", abort=True)
    n = Client(url).replay_dead_letters(topic, group, ids=ids or None)
    click.echo(f"replayed {n}")
