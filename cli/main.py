"""The `redismq` command."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections import Counter
from typing import Any

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table
from rich.text import Text

from cli.common import err, friendly, out, url_option
from redismq import Client, RedisMQError, TopicNotFound
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
    help="Fetch-and-run threads per subscription (topic/group) per broker in each process: "
    "up to that many jobs at once per subscription and broker.",
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
    from workers.loader import AppNotFound, load_app
    from workers.supervisor import Supervisor, WorkerOptions, run_in_process

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
    if processes == 1:
        sys.exit(run_in_process(opts))
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

    client = Client(url)
    if as_json:
        click.echo(json.dumps(snapshot(client), indent=2))
        return
    print_status(client)


def print_status(client: Client) -> None:
    """The dashboard's tables, printed once."""
    from cli.dashboard_data import gather
    from cli.dashboard_view import render

    client.ping()
    out.print(render(gather(client), width=out.width))


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
    from cli.dashboard import run_dashboard

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


@main.group()
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


def master_of(broker: Any, shard: str) -> str | None:
    """The master of a Redis Cluster broker that serves a queue's hash tag now."""
    from redismq.cluster import master_of_tag, topology

    return master_of_tag(topology(broker.redis), shard)


def describe_topic(client: Client, name: str) -> dict[str, Any]:
    """A topic's queues with their broker, broker state, length and backlog.

    A broker that does not answer costs one error, not one per queue: its queues are
    reported as unreachable.
    """
    import redis

    from redismq.brokers import unconsumed
    from redismq.routing import ACTIVE

    router = client.router
    with client.errors():
        t = client.topic(name, create=False)
        states = router.states()
        version = int(router.meta.get(router.keys.routes_version) or 0)
    failed: dict[str, str] = {}
    queues = []
    for q, broker in enumerate(t.placement):
        row: dict[str, Any] = {"queue": q, "broker": broker, "state": states.get(broker, ACTIVE)}
        if broker not in failed:
            try:
                with client.errors():
                    found = router.queue_broker(t, q)
                    if found.shard is not None:  # a Redis Cluster: the master of its slot
                        row.update(shard=found.shard, master=master_of(found, found.shard))
                    r = found.redis
                    row["length"] = r.xlen(router.queue_keys(name, q).stream)
                    row["backlog"] = unconsumed(client, name, q)
            except (redis.RedisError, RedisMQError) as exc:
                failed[broker] = str(exc)
        if broker in failed:
            row.update(length=None, backlog=None, error=failed[broker])
        queues.append(row)
    return {"name": t.name, "route_version": version, "queues": queues}


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


@main.group()
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
    from workers.logs import setup_logging

    setup_logging(log_level, "text")
    client = Client(url)
    client.ping()
    ns = NameServer(client, interval=interval)

    def stop(signum: int, frame: Any) -> None:
        ns.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    err.print(
        Text(
            f"nameserver {ns.id}: checking brokers every {interval:g}s, meta {mask_url(client.url)}"
        )
    )
    ns.run()


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
    from cli.demo import run_demo

    run_demo(signups, rate=rate, dashboard=not no_dashboard)


from cli.bench import bench  # noqa: E402  (cli.bench does not import this module)

main.add_command(bench)

from cli.outbox import outbox  # noqa: E402  (cli.outbox does not import this module)

main.add_command(outbox)

from cli.jobs import job  # noqa: E402  (cli.jobs does not import this module)

main.add_command(job)

from cli.dlq import dlq  # noqa: E402  (cli.dlq does not import this module)

main.add_command(dlq)

from cli.lifecycle import group, topic_delete  # noqa: E402  (does not import this module)

main.add_command(group)
topic.add_command(topic_delete)


if __name__ == "__main__":
    main()
