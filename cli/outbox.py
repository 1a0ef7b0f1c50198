"""`redismq outbox ...`: run a relay, create the outbox table or show its SQL, and show
the outboxes' state (the dashboard draws its table: cli.dashboard_view.outboxes_table)."""

from __future__ import annotations

import json

import click
from rich.text import Text

from redismq import Client
from redismq.cli.common import err, friendly, url_option
from redismq.process import StopEvent, stop_on_signals

table_option = click.option(
    "--table", default="redismq_outbox", show_default=True, help="The outbox table's name."
)


@click.group()
def outbox() -> None:
    """The transactional outbox: messages an app writes into its own database, in its own
    transaction, and a relay sends to their queues.

    Example: redismq outbox relay sqlite:///app.db
    """


@outbox.command("relay")
@click.argument("db_url")
@url_option
@table_option
@click.option("--batch", type=click.IntRange(1, 10_000), default=100, show_default=True)
@click.option(
    "--concurrency",
    type=click.IntRange(1, 64),
    default=8,
    show_default=True,
    help="Sends in flight at once (the rows of one key go one after the other).",
)
@click.option(
    "--interval",
    type=click.FloatRange(min=0.01),
    default=0.1,
    show_default=True,
    help="Seconds between two looks at an idle outbox.",
)
@click.option(
    "--keep-sent",
    type=click.FloatRange(min=0),
    default=3600.0,
    show_default=True,
    help="Seconds a sent row is kept before it is deleted.",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(1, 65535),
    default=None,
    help="Serve Prometheus metrics of the outbox's lag on this port.",
)
@click.option(
    "--log-level", default="INFO", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"])
)
@friendly
def relay(
    db_url: str,
    url: str,
    table: str,
    batch: int,
    concurrency: int,
    interval: float,
    keep_sent: float,
    metrics_port: int | None,
    log_level: str,
) -> None:
    """Send the rows of the outbox in DB_URL (a SQLAlchemy URL) to their queues, oldest
    first, until SIGTERM or Ctrl-C. Several relays may run at once.

    Example: redismq outbox relay postgresql://app@db/app --url redis://10.0.0.4:6379/0
    """
    from redismq.outbox import Outbox
    from redismq.relay import Relay
    from redismq.workers.logs import setup_logging
    from redismq.workers.outbox import LagGauges
    from redismq.workers.supervisor import ending

    setup_logging(log_level, "text")
    client = Client(url)
    ob = Outbox(client, db_url, table=table)
    server = None
    gauges = None
    if metrics_port is not None:
        from redismq.workers.metrics import MetricsServer

        gauges = LagGauges(ob.name)
        server = MetricsServer("127.0.0.1", metrics_port)
    runner = Relay(
        ob,
        batch=batch,
        concurrency=concurrency,
        interval=interval,
        keep_sent=keep_sent,
        on_lag=gauges.set if gauges else None,
    )
    stop = StopEvent()
    stop_on_signals(stop)
    err.print(Text(f"outbox relay {runner.id}: {ob.name} -> {client!r}"))
    try:
        runner.run(stop)
    finally:
        runner.maintain(force=True)
        runner.close()
        ob.close()
        if server is not None:
            server.close()
    ending(0)


@outbox.command("sql")
@click.argument("db_url")
@table_option
@friendly
def sql(db_url: str, table: str) -> None:
    """Print the SQL that creates the outbox table for DB_URL's database (for migrations).

    Example: redismq outbox sql postgresql://app@db/app
    """
    from redismq.outbox import Outbox

    click.echo(Outbox(None, db_url, table=table).sql(), nl=False)


@outbox.command("create")
@click.argument("db_url")
@table_option
@friendly
def create(db_url: str, table: str) -> None:
    """Create the outbox table in DB_URL's database (nothing happens if it exists).

    Example: redismq outbox create sqlite:///app.db
    """
    from redismq.outbox import Outbox

    ob = Outbox(None, db_url, table=table)
    ob.create_table()
    click.echo(f"outbox table ready: {ob.name}")


@outbox.command("status")
@click.argument("db_url")
@table_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@friendly
def status(db_url: str, table: str, as_json: bool) -> None:
    """Rows waiting in the outbox and the age of the oldest, read from the database itself
    (`redismq status` shows what the relays last reported).

    Example: redismq outbox status sqlite:///app.db --json
    """
    from redismq.outbox import Outbox

    ob = Outbox(None, db_url, table=table)
    lag = ob.lag()
    record = {"name": ob.name, "waiting": lag.waiting, "oldest_age": round(lag.oldest_age(), 3)}
    if as_json:
        click.echo(json.dumps(record))
    else:
        click.echo(f"{ob.name}: {lag.waiting} waiting, oldest {lag.oldest_age():.1f} s")
