"""`redismq demo`: a real local server, a worker process, 1,000 tasks and what happened."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from contextlib import ExitStack

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from redismq import Client
from redismq.server import LocalServer
from redismq.status import topic_status

TOPIC = "demo-emails"
GROUP = "workers"


def _group_row(client: Client) -> dict:
    for g in topic_status(client, TOPIC)["groups"]:
        if g["name"] == GROUP:
            return g
    return {"done": 0, "dead": 0, "duplicates": 0}


def run_demo(tasks: int) -> None:
    console = Console()
    with ExitStack() as stack:
        url = os.environ.get("REDISMQ_URL")
        if not url:
            server = stack.enter_context(LocalServer())
            console.print(f"started a local server: [bold]{server.binary}[/bold] on {server.url}")
            url = server.url
        client = Client(url, namespace=f"demo{os.getpid()}")
        client.create_topic(TOPIC, queues=4)
        worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "cli.main",
                "worker",
                "cli.demo_app:app",
                "--url",
                url,
                "--log-level",
                "WARNING",
            ],
            env={**os.environ, "REDISMQ_NAMESPACE": client.namespace},
        )
        stack.callback(_stop, worker)
        from cli.demo_app import send_welcome_email

        started = time.monotonic()
        client.send_many(TOPIC, [send_welcome_email.body((i,)) for i in range(tasks)])
        console.print(f"sent {tasks} tasks in {time.monotonic() - started:.2f}s")
        with Progress(
            TextColumn("welcome e-mails"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
        ) as bar:
            job = bar.add_task("done", total=tasks)
            row = _group_row(client)
            while row["done"] + row["dead"] < tasks and worker.poll() is None:
                time.sleep(0.1)
                row = _group_row(client)
                bar.update(job, completed=row["done"] + row["dead"])
        took = time.monotonic() - started
        console.print(
            f"done: {row['done']}, dead: {row['dead']}, duplicates suppressed: "
            f"{row['duplicates']}, in {took:.2f}s ({row['done'] / took:.0f} tasks/s)"
        )
        if row["done"] + row["dead"] < tasks:
            raise SystemExit("the worker stopped before all tasks were done")


def _stop(worker: subprocess.Popen) -> None:
    if worker.poll() is None:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(15)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
