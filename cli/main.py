"""The `redismq` command."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from functools import wraps
from typing import Any

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from redismq import Client, RedisMQError

err = Console(stderr=True, highlight=False)
out = Console(highlight=False)

url_option = click.option(
    "--url",
    envvar="REDISMQ_URL",
    default="redis://127.0.0.1:6379/0",
    show_default=True,
    help="URL of the meta Redis (env REDISMQ_URL).",
)


def friendly(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Report a RedisMQError as one red line and exit 1, never as a traceback."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except RedisMQError as exc:
            err.print(Text.assemble(("error:", "red"), " ", str(exc)), soft_wrap=True)
            sys.exit(1)

    return wrapper


def parse_body(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


@click.group()
@click.version_option(package_name="redismq")
def main() -> None:
    """redismq: a task and message queue on Redis Streams."""


@main.command()
@click.argument("app_spec", metavar="MODULE:APP")
@url_option
@click.option("--topic", "topics", multiple=True, help="Consume only this topic (repeatable).")
@click.option("--group", default=None, help="Consume only this group.")
@click.option(
    "--processes",
    type=click.IntRange(min=1),
    default=os.cpu_count() or 1,
    show_default="CPU count",
    help="Worker processes; 1 runs in this process, more are supervised by this one.",
)
@click.option(
    "--concurrency",
    type=click.IntRange(min=1),
    default=8,
    show_default=True,
    help="Jobs run at once per process (threads; async handlers each on their thread's loop).",
)
@click.option(
    "--visibility-timeout", type=click.FloatRange(min=0.1), default=30.0, show_default=True
)
@click.option(
    "--grace",
    type=click.FloatRange(min=0),
    default=30.0,
    show_default=True,
    help="Seconds running jobs get to finish after SIGTERM/SIGINT.",
)
@click.option("--burst", is_flag=True, help="Exit once nothing is pending, delayed or retrying.")
@click.option(
    "--log-level", default="INFO", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"])
)
@click.option("--log-format", default="text", type=click.Choice(["text", "json"]))
@click.option(
    "--metrics-port",
    type=click.IntRange(1, 65535),
    default=None,
    help="Serve Prometheus metrics on this port (http://HOST:PORT/metrics).",
)
@click.option(
    "--metrics-host",
    default="127.0.0.1",
    show_default=True,
    help="Address the metrics endpoint binds to (0.0.0.0 for every interface).",
)
@friendly
def worker(app_spec: str, url: str, processes: int, **options: Any) -> None:
    """Run workers for an app's tasks and handlers.

    Example: redismq worker myproject.tasks:app --url redis://127.0.0.1:6379/0 --processes 2
    """
    from workers.loader import AppNotFound, load_app
    from workers.supervisor import Supervisor, WorkerOptions, run_worker

    os.environ["REDISMQ_URL"] = url
    opts = WorkerOptions(app=app_spec, **options)
    try:
        app = load_app(app_spec)
    except AppNotFound as exc:
        raise click.BadParameter(str(exc), param_hint="MODULE:APP") from None
    if not any(
        (not opts.topics or s.topic in opts.topics) and opts.group in (None, s.group)
        for s in app.subscriptions.values()
    ):
        raise click.UsageError("the app has no task or handler for the chosen topics and group")
    app.client.ping()
    if processes == 1:
        sys.exit(run_worker(opts))
    from workers.logs import setup_logging

    setup_logging(opts.log_level, opts.log_format)
    sys.exit(Supervisor(opts, processes).run())


@main.command()
@url_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@friendly
def status(url: str, as_json: bool) -> None:
    """Print brokers, topics with their groups, and live workers.

    Example: redismq status --json
    """
    from redismq.status import snapshot

    snap = snapshot(Client(url))
    if as_json:
        click.echo(json.dumps(snap, indent=2))
        return
    print_status(snap)


def print_status(snap: dict[str, Any]) -> None:
    brokers = Table("broker", "url", "up", "role", title="Brokers")
    for b in snap["brokers"]:
        brokers.add_row(
            b["name"], b["url"], "up" if b["up"] else "[red]down[/red]", b["role"] or ""
        )
    out.print(brokers)
    groups = Table(
        "topic",
        "queues",
        "length",
        "delayed",
        "group",
        "pending",
        "lag",
        "retrying",
        "dead",
        "done",
        "dupes",
        "consumers",
        title="Topics and groups",
    )
    for t in snap["topics"]:
        head = [t["name"], str(t["queues"]), str(t["length"]), str(t["delayed"])]
        if not t["groups"]:
            groups.add_row(*head, "-", *[""] * 7)
        for g in t["groups"]:
            groups.add_row(
                *head,
                g["name"],
                *(
                    str(g[f])
                    for f in (
                        "pending",
                        "lag",
                        "retrying",
                        "dead",
                        "done",
                        "duplicates",
                        "consumers",
                    )
                ),
            )
            head = ["", "", "", ""]
    out.print(groups)
    workers = Table("worker", "topics", "processed", "failed", "in flight", title="Workers")
    for w in snap["workers"]:
        workers.add_row(
            w["id"],
            ",".join(w.get("topics", [])),
            str(w.get("processed", 0)),
            str(w.get("failed", 0)),
            str(w.get("in_flight", 0)),
        )
    out.print(workers)


@main.command()
@click.argument("topic")
@click.argument("body")
@url_option
@click.option("--key", default=None, help="Ordering key: same key, same queue.")
@click.option(
    "--delay", type=click.FloatRange(min=0), default=None, help="Seconds before it is visible."
)
@click.option("--dedup-key", default=None, help="A resend with this key is a no-op.")
@friendly
def send(
    topic: str, body: str, url: str, key: str | None, delay: float | None, dedup_key: str | None
) -> None:
    """Send one message (BODY is JSON, or else a string).

    Example: redismq send emails '{"to": "a@b.c"}' --delay 5
    """
    mid = Client(url).send(topic, parse_body(body), key=key, delay=delay, dedup_key=dedup_key)
    click.echo(mid)


@main.group()
def topic() -> None:
    """Create and list topics."""


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


@main.group()
def dlq() -> None:
    """Inspect and replay dead letters."""


@dlq.command("list")
@click.argument("topic")
@click.option("--group", required=True)
@url_option
@click.option("--count", type=click.IntRange(1), default=20, show_default=True)
@friendly
def dlq_list(topic: str, group: str, url: str, count: int) -> None:
    """List a group's dead letters.

    Example: redismq dlq list emails --group mailer
    """
    table = Table("id", "queue", "attempts", "reason", title=f"Dead letters of {topic}/{group}")
    for d in Client(url).dead_letters(topic, group, count=count):
        table.add_row(d.id, str(d.queue), str(d.attempts), d.reason)
    out.print(table)


@dlq.command("replay")
@click.argument("topic")
@click.option("--group", required=True)
@click.option("--id", "ids", multiple=True, help="Replay only this message id (repeatable).")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@url_option
@friendly
def dlq_replay(topic: str, group: str, ids: tuple[str, ...], yes: bool, url: str) -> None:
    """Give dead letters back to their group.

    Example: redismq dlq replay emails --group mailer --yes
    """
    if not yes:
        click.confirm(f"Replay dead letters of {topic}/{group}?", abort=True)
    n = Client(url).replay_dead_letters(topic, group, ids=ids or None)
    click.echo(f"replayed {n}")


@main.command()
@click.option("--tasks", type=click.IntRange(1), default=1000, show_default=True)
@friendly
def demo(tasks: int) -> None:
    """Start a local server and a worker, send tasks, show them complete, stop everything.

    Example: redismq demo --tasks 1000
    """
    from cli.demo import run_demo

    run_demo(tasks)


from cli.bench import bench  # noqa: E402  (cli.bench does not import this module)

main.add_command(bench)


if __name__ == "__main__":
    main()
