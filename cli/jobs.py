"""`redismq job …`: a task's job by its id alone."""

from __future__ import annotations

import json
from typing import Any

import click
from rich.table import Table
from rich.text import Text

from redismq import Client
from redismq.cli.common import friendly, iso, out, url_option, when


@click.group()
def job() -> None:
    """Look at or cancel a task's job by its id (what `task.send()` returned as `job.id`).

    Example: redismq job show 01a2184e91cf93b4e1238c211c8c2567
    """


@job.command("show")
@click.argument("job_id", metavar="ID")
@url_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@friendly
def job_show(job_id: str, url: str, as_json: bool) -> None:
    """Show a job: status, where it is, attempts, progress, times, error and traceback.

    Example: redismq job show 01a2184e91cf93b4e1238c211c8c2567 --json
    """
    record = Client(url).job(job_id).describe()
    if as_json:
        times = ("sent_at", "started_at", "finished_at", "retry_at")
        click.echo(
            json.dumps({k: iso(v) if k in times else v for k, v in record.items()}, indent=2)
        )
        return
    out.print(job_table(record))
    if record["traceback"]:
        out.print(Text(record["traceback"]), soft_wrap=True)


@job.command("cancel")
@click.argument("job_id", metavar="ID")
@url_option
@friendly
def job_cancel(job_id: str, url: str) -> None:
    """Cancel a job: a queued one never runs, a running one is stopped (as its time limit
    would stop it), in every group. Exits 1, changing nothing, for a job that had finished
    (done or dead).

    Example: redismq job cancel 01a2184e91cf93b4e1238c211c8c2567
    """
    found = Client(url).job(job_id)
    if found.cancel():
        click.echo(f"job {job_id}: cancelled")
        return
    status = found.status()
    if status == "cancelled":
        click.echo(f"job {job_id}: cancelled already")
        return
    click.echo(f"job {job_id}: not cancelled, it had finished ({status})")
    raise SystemExit(1)


def job_table(r: dict[str, Any]) -> Table:
    """The job's record as a two-column table."""
    table = Table("field", "value", title=f"job {r['id']}", show_header=False)
    table.add_row("status", r["status"])
    table.add_row("task", Text(r["task"] or "-"))
    table.add_row("topic/group", Text(f"{r['topic']}/{r['group']} (queue {r['queue']})"))
    table.add_row("attempts", str(r["attempts"]))
    if r["progress"]:
        p = r["progress"]
        table.add_row("progress", Text(f"{p['fraction']:.0%} {p['text']}".rstrip()))
    table.add_row("sent", when(r["sent_at"]))
    table.add_row("started", when(r["started_at"]))
    if r["finished_at"]:
        table.add_row("finished", when(r["finished_at"]))
    if r["started_at"] and r["finished_at"]:
        table.add_row("ran", f"{(r['finished_at'] - r['started_at']) / 1000:.3f}s")
    if r["retry_at"]:
        table.add_row("next attempt", when(r["retry_at"]))
    if r["error"]:
        table.add_row("error", Text(f"{r['error']['type']}: {r['error']['message']}"))
    if r["status"] == "done" and r["result"] is not None:
        table.add_row("result", Text(json.dumps(r["result"])))
    return table
