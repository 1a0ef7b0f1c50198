"""Welcome e-mails under load while the worker is SIGKILLed: what is repeated, what the
receiver drops by the step's key, what reaches a user twice, what is lost.

Starts everything it needs on loopback ports (a local Redis/Valkey unless --url or
$REDISMQ_URL is given, the SMTP sink answering after --smtp-delay seconds, the web app in
a thread, a worker of --processes processes in its own process group), signs up --signups
users from --clients concurrent HTTP clients, SIGKILLs the worker's whole process group
--kills times while the e-mails go out (restarting it each time), waits until every
e-mail is sent, and prints the figures.

Run it: python -m examples.registration.kills --signups 2000 --clients 50 --kills 2
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def start_worker(processes: int, visibility_timeout: float) -> subprocess.Popen:
    args = [sys.executable, "-m", "redismq.cli.main", "worker", "examples.registration.tasks:app"]
    args += ["--processes", str(processes), "--visibility-timeout", str(visibility_timeout)]
    args += ["--log-level", "ERROR"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(args, cwd=ROOT, env=env, start_new_session=True)


def kill_group(worker: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(worker.pid, signal.SIGKILL)
    worker.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--signups", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--kills", type=int, default=2)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--smtp-delay", type=float, default=0.05)
    parser.add_argument("--visibility-timeout", type=float, default=5.0)
    parser.add_argument("--url", default=os.environ.get("REDISMQ_URL"))
    args = parser.parse_args()

    import httpx

    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="registration-kills-"))
        url = args.url
        if not url:
            from redismq.server import LocalServer

            url = stack.enter_context(LocalServer()).url
        from .smtp_sink import SmtpSink, free_port

        sink = stack.enter_context(SmtpSink(f"{tmp}/mailbox.db", delay=args.smtp_delay))
        os.environ.update(
            REDISMQ_URL=url,
            REDISMQ_NAMESPACE=f"kills{os.getpid()}",
            SMTP_HOST=sink.host,
            SMTP_PORT=str(sink.port),
            REGISTRATION_DB=f"{tmp}/registration.db",
        )
        from redismq.status import topic_status

        from .tasks import TOPIC, app
        from .web import create_app, serve_in_thread

        app.client.create_topic(TOPIC)
        base = stack.enter_context(serve_in_thread(create_app("queued"), free_port()))
        workers = [start_worker(args.processes, args.visibility_timeout)]
        stack.callback(lambda: kill_group(workers[-1]))

        def mailer() -> dict:
            groups = topic_status(app.client, TOPIC)["groups"]
            return next(g for g in groups if g["name"] == "mailer")

        errors: list[str] = []
        lock = threading.Lock()

        def sign_up(i: int) -> None:
            """One sign-up, sent again (as a browser or client would) after a 5xx answer: the
            web app's dedup key makes that harmless."""
            body = {"email": f"user{i}@example.com", "name": f"User {i}"}
            with httpx.Client(base_url=base, timeout=60) as http:
                for attempt in range(10):
                    try:
                        answer = http.post("/api/signup", json=body)
                        if answer.status_code < 500 or attempt == 9:
                            answer.raise_for_status()
                            return
                        error = answer.text[:200]
                    except httpx.TransportError as exc:
                        if attempt == 9:
                            raise
                        error = f"{type(exc).__name__}: {exc}"
                    with lock:
                        errors.append(error)
                    time.sleep(0.5)

        started = time.monotonic()
        with ThreadPoolExecutor(args.clients) as pool:
            futures = [pool.submit(sign_up, i) for i in range(args.signups)]
            # kill while e-mails go out: at even steps of the e-mails sent so far
            for k in range(1, args.kills + 1):
                target = args.signups * k // (args.kills + 1)
                while sink.count()[0] < target and time.monotonic() - started < 600:
                    time.sleep(0.02)
                kill_group(workers[-1])
                workers.append(start_worker(args.processes, args.visibility_timeout))
            for f in futures:
                f.result()
        deadline = time.monotonic() + 600
        while mailer()["done"] < args.signups and time.monotonic() < deadline:
            time.sleep(0.2)
        took = time.monotonic() - started
        row = mailer()
        received, distinct = sink.count()
        dropped = sink.dropped()
        recipients = {m["rcpt_to"] for m in sink.messages()}

    repeats = dropped + (received - len(recipients))
    print(
        f"{args.signups} sign-ups from {args.clients} clients, worker --processes "
        f"{args.processes} SIGKILLed (whole process group) {args.kills} times, SMTP answering "
        f"after {args.smtp_delay:g} s; {took:.1f} s"
    )
    print(f"welcome e-mails done (mailer group)         {row['done']} (dead {row['dead']})")
    print(f"e-mails the receiver kept                   {received} ({distinct} distinct)")
    print(f"users without an e-mail (lost)              {args.signups - len(recipients)}")
    print(f"e-mails sent again by a later run           {repeats}")
    print(f"  of which dropped by the receiver (key)    {dropped}")
    print(f"users who got their e-mail twice            {received - len(recipients)}")
    if errors:
        print(f"sign-up requests that failed and were resent {len(errors)}: {errors[0]!r}")


if __name__ == "__main__":
    main()
