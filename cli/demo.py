"""`redismq demo`: the registration example on real local servers, driven by simulated
sign-ups, watched on the dashboard, then a summary of what happened.

What it starts (and stops again, whatever happens): a meta Redis and two brokers, each a
master with one replica (5 local servers; with $REDISMQ_URL set, that Redis alone), the
NameServer and a worker pool of 2 processes (subprocesses; it also relays the web app's
outbox), the SMTP sink and the registration web app (uvicorn, in threads of this
process), whose sign-ups commit the user and the e-mail's outbox row together. It needs
a source checkout: the web app and the tasks are those of examples/registration.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from redismq import Client, RedisMQError
from redismq.process import die_with_parent
from redismq.server import LocalServer
from redismq.urls import mask_url

from .dashboard_data import Gatherer
from .dashboard_view import render

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "registration"
TOPIC = "user-registered"
QUEUES = 4
SETTLE_TIMEOUT = 40.0


class DemoError(RedisMQError):
    """The demo cannot run or did not finish."""


@dataclass(slots=True)
class SignUp:
    """One simulated sign-up and what the web app answered."""

    n: int
    email: str
    double: bool = False  # submitted twice (a double click)
    status: list[int] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    created: list[bool] = field(default_factory=list)  # per answer: a new account?

    @property
    def valid(self) -> bool:
        return "@" in self.email

    @property
    def bounces(self) -> bool:
        return self.email.endswith("@bounce.example")


def plan(signups: int) -> list[SignUp]:
    """The sign-ups: mostly good ones; every 10th is submitted twice, one in 40 has an
    invalid address (the app answers 422), one in 50 goes to a domain whose mail server
    refuses it (the task fails, is retried, then dead-lettered)."""
    out = []
    for i in range(signups):
        if i % 40 == 7:
            email = f"user{i}-at-example.com"
        elif i % 50 == 13:
            email = f"user{i}@bounce.example"
        else:
            email = f"user{i}@example.com"
        out.append(SignUp(i, email, double=i % 10 == 4))
    return out


def run_demo(
    signups: int,
    rate: float = 20.0,
    dashboard: bool = True,
    processes: int = 2,
    smtp_delay: float = 0.05,
    console: Console | None = None,
) -> None:
    console = console or Console(highlight=False)
    if not (EXAMPLE / "web.py").is_file():
        raise DemoError(
            f"the demo runs examples/registration from a source checkout; {EXAMPLE} is missing"
        )
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    with ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="redismq-demo-"))
        meta_url, namespace = start_servers(stack, console)
        client = Client(meta_url, namespace=namespace)
        client.create_topic(TOPIC, queues=QUEUES)
        log_path = Path(tmp) / "processes.log"
        log = stack.enter_context(open(log_path, "ab"))

        from examples.registration.smtp_sink import SmtpSink, free_port

        sink = SmtpSink(f"{tmp}/mailbox.db", delay=smtp_delay)  # started after the processes
        env = {
            "REDISMQ_URL": meta_url,
            "REDISMQ_NAMESPACE": namespace,
            "REGISTRATION_DB": f"{tmp}/registration.db",
            "SMTP_HOST": sink.host,
            "SMTP_PORT": str(sink.port),
        }
        os.environ.update(env)
        started_here = []
        if client.router.broker_names() != ["default"]:
            ns = spawn(stack, ["nameserver", "--url", meta_url, "--log-level", "WARNING"], env, log)
            started_here.append(f"nameserver pid {ns.pid}")
        worker = spawn(
            stack,
            ["worker", "examples.registration.tasks:app", "--url", meta_url]
            + ["--processes", str(processes), "--concurrency", "8", "--log-level", "WARNING"]
            + ["--outbox", f"sqlite:///{env['REGISTRATION_DB']}"],
            env,
            log,
        )
        started_here.append(f"worker pid {worker.pid} ({processes} processes)")
        console.print("started " + ", ".join(started_here))
        stack.enter_context(sink)

        from examples.registration.web import create_app, serve_in_thread

        base = stack.enter_context(serve_in_thread(create_app("outbox"), free_port()))
        console.print(
            f"in this process: the web app on {base}/, the SMTP sink on :{sink.port} "
            f"(answers after {smtp_delay:g}s)"
        )
        pace = f"{rate:g}/s" if rate > 0 else "as fast as possible"
        console.print(f"signing up {signups} users ({pace})...\n")

        people = plan(signups)
        driver = Driver(base, people, rate)
        started = time.monotonic()
        driver.start()
        expected = Expected.of(people)
        gatherer = Gatherer(client)
        stack.callback(gatherer.close)
        last, delivered = watch(
            console, gatherer, driver, sink, env["REGISTRATION_DB"], expected, dashboard
        )
        took = time.monotonic() - started
        flowed = (delivered or time.monotonic()) - started
        time.sleep(0.5)  # so that the rates of the last frame cover half a second
        data = gatherer.gather(last)
        if dashboard:
            console.print(render(data, width=console.width))
        summary(console, people, sink, env["REGISTRATION_DB"], data, (took, flowed), rate)
        if worker.poll() is not None:
            console.print(log_path.read_text(errors="replace")[-3000:])
            raise DemoError(f"the worker exited early with code {worker.returncode}")
        console.print("\nstopping everything it started...")
    console.print("done.")


def start_servers(stack: ExitStack, console: Console) -> tuple[str, str]:
    """The meta URL and namespace: $REDISMQ_URL as it is, else 5 local servers (a meta
    Redis, and two brokers of a master and a replica each, registered)."""
    namespace = f"demo{os.getpid()}"
    url = os.environ.get("REDISMQ_URL")
    if url:
        console.print(
            f"using $REDISMQ_URL {mask_url(url)} (namespace {namespace}): one broker, no "
            "servers started"
        )
        return url, namespace
    from redismq.brokers import add_broker

    started = time.monotonic()
    meta = stack.enter_context(LocalServer())
    client = Client(meta.url, namespace=namespace)
    lines = [f"meta Redis  127.0.0.1:{meta.port} (pid {meta.pid})"]
    for name in ("b1", "b2"):
        master = stack.enter_context(LocalServer())
        replica = stack.enter_context(LocalServer(replica_of=master))
        add_broker(client, name, master.url, [replica.url])
        lines.append(
            f"broker {name}   master :{master.port} (pid {master.pid}), "
            f"replica :{replica.port} (pid {replica.pid})"
        )
    console.print(
        f"started 5 local servers ({os.path.basename(meta.binary)}) in "
        f"{time.monotonic() - started:.1f}s:"
    )
    for line in lines:
        console.print("  " + line)
    return meta.url, namespace


def spawn(stack: ExitStack, args: list[str], env: dict[str, str], log: Any) -> subprocess.Popen:
    """A `redismq` command as a child process (stopped with SIGTERM when the stack
    closes; killed by the kernel if this process dies first)."""
    parent = os.getpid()
    proc = subprocess.Popen(
        [sys.executable, "-m", "redismq.cli.main", *args],
        cwd=ROOT,
        env={**os.environ, **env, "PYTHONPATH": str(ROOT)},
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        preexec_fn=lambda: die_with_parent(signal.SIGTERM, parent),
    )
    stack.callback(stop, proc)
    return proc


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Driver(threading.Thread):
    """Posts the sign-ups to the web app, paced at `rate` per second, from 8 threads."""

    def __init__(self, base: str, people: list[SignUp], rate: float) -> None:
        super().__init__(name="signups", daemon=True)
        self.base = base
        self.people = people
        self.rate = rate
        self.sent = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        import httpx

        started = time.monotonic()
        with httpx.Client(base_url=self.base, timeout=30) as http:

            def post(person: SignUp) -> None:
                if self.rate > 0:
                    time.sleep(max(0.0, started + person.n / self.rate - time.monotonic()))
                for _ in range(2 if person.double else 1):
                    t = time.perf_counter()
                    answer = http.post(
                        "/api/signup", json={"email": person.email, "name": f"User {person.n}"}
                    )
                    person.seconds.append(time.perf_counter() - t)
                    person.status.append(answer.status_code)
                    if answer.status_code < 300:
                        person.created.append(answer.json()["created"])
                self.sent += 1

            try:
                with ThreadPoolExecutor(8) as pool:
                    list(pool.map(post, self.people))
            except BaseException as exc:  # shown by the main thread
                self.error = exc


@dataclass(slots=True)
class Expected:
    emails: int
    events: int
    dead: int

    @classmethod
    def of(cls, people: list[SignUp]) -> Expected:
        valid = [p for p in people if p.valid]
        bounced = sum(p.bounces for p in valid)
        return cls(len(valid) - bounced, len(valid), bounced)


def progress(sink: Any, db_path: str) -> tuple[int, int]:
    """E-mails the sink received and sign-up events the analytics group recorded."""
    from examples.registration import db

    conn = db.connect(db_path)
    try:
        events = db.counts(conn)["signup_events"]
    finally:
        conn.close()
    return sink.count()[0], events


def dead_letters(data: dict[str, Any]) -> int:
    return sum(g["dead"] for t in data["topics"] for g in t["groups"] if g["name"] == "mailer")


def watch(
    console: Console,
    gatherer: Gatherer,
    driver: Driver,
    sink: Any,
    db_path: str,
    expected: Expected,
    dashboard: bool,
) -> tuple[dict[str, Any], float | None]:
    """Until every sign-up is answered and every outcome is in: the live dashboard on a
    terminal, else a progress line every 2 seconds. Returns the last data gathered and
    when every e-mail and analytics event was in (time.monotonic(); None if never)."""
    live = dashboard and console.is_terminal
    deadline: float | None = None
    previous: dict[str, Any] | None = None
    last_line = 0.0
    delivered: float | None = None
    context = (
        Live(console=console, auto_refresh=False, transient=True, vertical_overflow="crop")
        if live
        else None
    )
    with context or ExitStack():
        while True:
            data = gatherer.gather(previous)
            previous = data
            emails, events = progress(sink, db_path)
            dead = dead_letters(data)
            if delivered is None and emails >= expected.emails and events >= expected.events:
                delivered = time.monotonic()
            if context is not None:
                context.update(render(data, width=console.width), refresh=True)
            elif time.monotonic() - last_line >= 2:
                last_line = time.monotonic()
                console.print(
                    f"sign-ups {driver.sent}/{len(driver.people)}  e-mails {emails}  "
                    f"analytics {events}  dead letters {dead}"
                )
            if not driver.is_alive():
                if driver.error is not None:
                    raise DemoError(f"signing up failed: {driver.error}")
                if (
                    emails >= expected.emails
                    and events >= expected.events
                    and dead >= expected.dead
                ):
                    return data, delivered
                deadline = deadline or time.monotonic() + SETTLE_TIMEOUT
                if time.monotonic() > deadline:
                    console.print("[red]gave up waiting for every outcome[/red]")
                    return data, delivered
            time.sleep(0.5 if live else 0.2)


def summary(
    console: Console,
    people: list[SignUp],
    sink: Any,
    db_path: str,
    data: dict[str, Any],
    took: tuple[float, float],
    rate: float,
) -> None:
    from examples.registration import db

    conn = db.connect(db_path)
    try:
        counts = db.counts(conn)
    finally:
        conn.close()
    received, distinct = sink.count()
    posts = sum(len(p.status) for p in people)
    invalid = sum(1 for p in people for s in p.status if s == 422)
    doubles = [p for p in people if p.double and p.valid]
    found_account = sum(1 for p in doubles if p.created == [True, False])
    topic = next((t for t in data["topics"] if t["name"] == TOPIC), None)
    groups = {g["name"]: g for g in (topic or {}).get("groups", [])}
    mailer, analytics = groups.get("mailer", {}), groups.get("analytics", {})
    answered = sorted(s * 1000 for p in people for s in p.seconds)
    p50 = statistics.median(answered) if answered else 0.0
    p99 = answered[min(len(answered) - 1, int(0.99 * len(answered)))] if answered else 0.0
    tasks = mailer.get("done", 0) + mailer.get("dead", 0) + analytics.get("done", 0)

    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    table.add_row(
        "sign-ups",
        f"{len(people)} users, {posts} requests: {counts['users']} accounts created, "
        f"{invalid} refused with 422 (invalid e-mail address), "
        f"{len(doubles)} submitted twice",
    )
    table.add_row(
        "welcome e-mails",
        f"{received} received by the SMTP sink, {distinct} distinct: "
        + ("each user got exactly one" if received == distinct else "SOME TWICE"),
    )
    table.add_row(
        "dead letters",
        f"{mailer.get('dead', 0)} (addresses at bounce.example: the mail server refuses "
        f"them; {mailer.get('retried', 0)} retries first)",
    )
    table.add_row(
        "duplicates suppressed",
        f"{topic['deduplicated'] if topic else 0} at send (dedup key = user id; "
        f"{found_account}/{len(doubles)} double submits found the account and wrote no "
        "second message), "
        f"{mailer.get('duplicates', 0) + analytics.get('duplicates', 0)} at the workers",
    )
    table.add_row(
        "fan-out",
        f"group mailer finished {mailer.get('done', 0)} + {mailer.get('dead', 0)} dead, "
        f"group analytics recorded {counts['signup_events']} sign-ups",
    )
    table.add_row("response time", f"p50 {p50:.1f} ms, p99 {p99:.1f} ms (e-mail not waited for)")
    pace = f"sign-ups paced at {rate:g}/s" if rate > 0 else "sign-ups as fast as possible"
    total, flowed = took
    table.add_row(
        "time taken",
        f"{total:.1f} s from the first sign-up to the last outcome (the bounced e-mails' "
        f"retries last longest)",
    )
    table.add_row(
        "throughput",
        f"{tasks} tasks (e-mails, analytics, dead letters) with every e-mail and event in "
        f"after {flowed:.1f} s: {tasks / max(flowed, 1e-9):.0f} tasks/s ({pace})",
    )
    console.print()
    console.print("[bold]What happened[/bold]")
    console.print(table)
