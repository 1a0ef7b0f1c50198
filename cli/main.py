"""The `redismq` command."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.text import Text

from redismq import Client, TopicNotFound
from redismq.cli.bench import bench
from redismq.cli.brokers import broker
from redismq.cli.common import err, friendly, out, url_option
from redismq.cli.dlq import dlq
from redismq.cli.jobs import job
from redismq.cli.lifecycle import group
from redismq.cli.outbox import outbox
from redismq.cli.topics import topic
from redismq.urls import mask_url


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
    help="Jobs at once per subscription (topic/group) per broker in each process: a thread "
    "each, or, when all of a topic's tasks are coroutines, one event loop for them all.",
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
@click.option(
    "--outbox",
    metavar="DB_URL",
    default=None,
    help="Also relay the outbox in this database (a SQLAlchemy URL) to the queues.",
)
@friendly
def worker(app_spec: str, url: str, processes: int, **options: Any) -> None:
    """Run workers for an app's tasks and handlers.

    Example: redismq worker myproject.tasks:app --url redis://127.0.0.1:6379/0 --processes 2
    """
    from redismq.workers.loader import AppNotFound, load_app
    from redismq.workers.supervisor import WorkerOptions, run_in_process, run_pool

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
    if opts.outbox:
        from redismq.outbox import Outbox

        Outbox(app, opts.outbox)  # a bad URL is one line now, not in every process
    sys.exit(run_in_process(opts) if processes == 1 else run_pool(opts, processes))


@main.command()
@url_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@friendly
def status(url: str, as_json: bool) -> None:
    """Print brokers, topics with their groups, and live workers.

    Example: redismq status --json
    """
    from redismq.status import snapshot

    client = Client(url)
    if as_json:
        click.echo(json.dumps(snapshot(client), indent=2))
        return
    print_status(client)


def print_status(client: Client) -> None:
    """The dashboard's tables, printed once."""
    from redismq.cli.dashboard_data import gather
    from redismq.cli.dashboard_view import render

    client.ping()
    out.print(render(gather(client), width=out.width, full_ids=True))


@main.command()
@url_option
@click.option(
    "--interval",
    type=click.FloatRange(min=0.1),
    default=1.0,
    show_default=True,
    help="Seconds between two refreshes.",
)
@friendly
def dashboard(url: str, interval: float) -> None:
    """A live full-terminal view of brokers, topics with their groups, workers and the
    latest dead letters, refreshed every interval. Read-only: it never writes to Redis.
    q or Ctrl-C quits.

    Example: redismq dashboard --url redis://127.0.0.1:6379/0 --interval 2
    """
    from redismq.cli.dashboard import run_dashboard

    client = Client(url)
    client.ping()
    run_dashboard(client, interval, out)


@main.command()
@click.argument("topic")
@click.argument("body", required=False)
@url_option
@click.option("--key", default=None, help="Ordering key: same key, same queue.")
@click.option(
    "--delay", type=click.FloatRange(min=0), default=None, help="Seconds before it is visible."
)
@click.option("--dedup-key", default=None, help="A resend with this key is a no-op.")
@click.option("--create", is_flag=True, help="Create the topic if it does not exist.")
@click.option(
    "--file",
    "path",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="Send every line of a JSON Lines file, in pipelined batches.",
)
@friendly
def send(
    topic: str,
    body: str | None,
    url: str,
    key: str | None,
    delay: float | None,
    dedup_key: str | None,
    create: bool,
    path: str | None,
) -> None:
    """Send one message (BODY is JSON, or else a string), or a file of them. The topic must
    exist, unless --create (a typo then makes a new topic).

    Example: redismq send emails '{"to": "a@b.c"}' --delay 5
    Example: redismq send emails --file signups.jsonl --create
    """
    if (body is None) == (path is None):
        raise click.UsageError("give either BODY or --file")
    if path is not None and (key or delay or dedup_key):
        raise click.UsageError("--key, --delay and --dedup-key go with a single BODY")
    bodies = read_jsonl(path) if path is not None else []
    client = Client(url)
    try:
        client.topic(topic, create=create)
    except TopicNotFound:
        raise click.UsageError(
            f"topic {topic!r} does not exist: pass --create to create it "
            f"(or: redismq topic create {topic})"
        ) from None
    if body is not None:  # else a --file (exactly one of the two was given)
        mid = client.send(topic, parse_body(body), key=key, delay=delay, dedup_key=dedup_key)
        click.echo(mid)
        return
    with Progress(
        TextColumn(f"sending to {topic}"), BarColumn(), MofNCompleteColumn(), console=err
    ) as bar:
        task = bar.add_task("send", total=len(bodies))
        for start in range(0, len(bodies), SEND_BATCH):
            chunk = bodies[start : start + SEND_BATCH]
            client.send_many(topic, chunk)
            bar.advance(task, len(chunk))
    click.echo(f"sent {len(bodies)} messages to {topic}")


SEND_BATCH = 500


def read_jsonl(path: str) -> list[Any]:
    """Every line of a JSON Lines file (blank lines skipped); a bad line is a usage error
    naming it, before anything is sent."""
    bodies = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                bodies.append(json.loads(line))
            except ValueError as exc:
                raise click.UsageError(f"{path}, line {number}: not JSON ({exc})") from None
    return bodies


@main.command()
@url_option
@click.option(
    "--interval",
    type=click.FloatRange(min=0.05),
    default=1.0,
    show_default=True,
    help="Seconds between two checks of every broker.",
)
@click.option(
    "--log-level", default="INFO", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"])
)
@friendly
def nameserver(url: str, interval: float, log_level: str) -> None:
    """Check every broker's master and replicas each interval, record their health
    (up/down, role, replication offset and lag, the current master of a sentinel://
    broker) and bump the route version when clients must re-read routes. Runs until
    SIGTERM or Ctrl-C. Several may run at once: one acts, the others wait for its lease.

    Example: redismq nameserver --url redis://10.0.0.4:6379/0 --interval 1
    """
    from redismq.nameserver import NameServer
    from redismq.process import stop_on_signals
    from redismq.workers.logs import setup_logging
    from redismq.workers.supervisor import ending

    setup_logging(log_level, "text")
    client = Client(url)
    client.ping()
    ns = NameServer(client, interval=interval)
    stop_on_signals(ns.stopping)
    err.print(
        Text(
            f"nameserver {ns.id}: checking brokers every {interval:g}s, meta {mask_url(client.url)}"
        )
    )
    ns.run()
    ending(0)


@main.command()
@click.option(
    "--signups",
    "--tasks",
    "signups",
    type=click.IntRange(1, 100_000),
    default=200,
    show_default=True,
    help="Simulated users to sign up.",
)
@click.option(
    "--rate",
    type=click.FloatRange(min=0),
    default=20.0,
    show_default=True,
    help="Sign-ups per second (0: as fast as possible).",
)
@click.option("--no-dashboard", is_flag=True, help="Progress lines instead of the dashboard.")
@friendly
def demo(signups: int, rate: float, no_dashboard: bool) -> None:
    """Run the registration example on local servers (2 brokers with a replica each, the
    NameServer, 2 worker processes, the web app, an SMTP sink), sign up simulated users,
    show the dashboard, print what happened and stop everything it started.

    Example: redismq demo --signups 200
    """
    from redismq.cli.demo import run_demo

    run_demo(signups, rate=rate, dashboard=not no_dashboard)


for command in (topic, broker, group, job, dlq, outbox, bench):
    main.add_command(command)


if __name__ == "__main__":
    main()
