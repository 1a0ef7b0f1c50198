"""How long a sign-up takes to answer with the welcome e-mail sent inline, queued directly,
or through the outbox, and how long the e-mail then takes to arrive.

Starts everything it needs on loopback ports (a local Redis/Valkey unless --url or
$REDISMQ_URL is given, the SMTP sink, a worker process that also relays the outbox, and
one uvicorn server per mode; the inline mode has a SQLite file of its own, the other two
share one), signs up the same number of users through each over real HTTP, one after the
other, and prints the response times (p50, p99) and, for the queued and outbox modes, the
time from the sign-up's commit to the e-mail stored by the SMTP sink. The sink waits
--smtp-delay seconds before accepting each e-mail, as a real mail server or mail API does.

Run it: python -m examples.registration.measure --signups 50 --smtp-delay 0.3
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def sign_up_times(base_url: str, prefix: str, n: int, rate: float = 0.0) -> list[float]:
    """Seconds each of n sign-ups took, client side, one after the other (at most `rate`
    per second; 0: as fast as they answer)."""
    import httpx

    times = []
    with httpx.Client(base_url=base_url, timeout=30) as http:
        http.post("/api/signup", json={"email": f"warmup-{prefix}@example.com", "name": "W"})
        first = time.perf_counter()
        for i in range(n):
            if rate > 0:
                time.sleep(max(0.0, i / rate - (time.perf_counter() - first)))
            started = time.perf_counter()
            answer = http.post(
                "/api/signup", json={"email": f"{prefix}{i}@example.com", "name": f"User {i}"}
            )
            times.append(time.perf_counter() - started)
            answer.raise_for_status()
    return times


MODES = (("inline", "e-mail inline"), ("queued", "e-mail queued"), ("outbox", "through outbox"))


def commit_to_email(db_path: str, mailbox: str, prefix: str) -> list[float]:
    """Seconds from each user's commit (its created_at) to its e-mail in the sink."""
    with sqlite3.connect(db_path) as conn:
        created = dict(
            conn.execute("SELECT email, created_at FROM users WHERE email LIKE ?", (f"{prefix}%",))
        )
    with sqlite3.connect(mailbox) as conn:
        received = dict(conn.execute("SELECT rcpt_to, MIN(received_at) FROM messages GROUP BY 1"))
    return [received[e] - t for e, t in created.items() if e in received]


def arrived(mailbox: str, prefix: str, n: int, timeout: float) -> bool:
    """Wait until the sink holds e-mails to n addresses starting with `prefix`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with sqlite3.connect(mailbox) as conn:
            got = conn.execute(
                "SELECT COUNT(DISTINCT rcpt_to) FROM messages WHERE rcpt_to LIKE ?", (f"{prefix}%",)
            ).fetchone()[0]
        if got >= n:
            return True
        time.sleep(0.05)
    return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--signups", type=int, default=50)
    parser.add_argument("--smtp-delay", type=float, default=0.3)
    parser.add_argument(
        "--rate",
        type=float,
        default=10.0,
        help="sign-ups per second at most (0: as fast as they answer); the e-mails' time "
        "from commit is only comparable between modes at a rate the worker keeps up with",
    )
    parser.add_argument("--url", default=os.environ.get("REDISMQ_URL"))
    args = parser.parse_args()

    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="registration-"))
        url = args.url
        if not url:
            from redismq.server import LocalServer

            url = stack.enter_context(LocalServer()).url
        from .smtp_sink import SmtpSink, free_port

        sink = stack.enter_context(SmtpSink(f"{tmp}/mailbox.db", delay=args.smtp_delay))
        shared = f"{tmp}/app.db"  # the queued and outbox modes' users, and the outbox
        os.environ.update(
            REDISMQ_URL=url,
            REDISMQ_NAMESPACE=f"measure{os.getpid()}",
            SMTP_HOST=sink.host,
            SMTP_PORT=str(sink.port),
            REGISTRATION_DB=shared,
        )
        from .tasks import TOPIC, app
        from .web import create_app, serve_in_thread

        app.client.create_topic(TOPIC)
        worker = subprocess.Popen(
            [sys.executable, "-m", "redismq.cli.main", "worker", "examples.registration.tasks:app"]
            + ["--processes", "1", "--concurrency", "16", "--log-level", "ERROR"]
            + ["--outbox", f"sqlite:///{shared}"],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        stack.callback(worker.wait, 30)
        stack.callback(worker.terminate)

        results = {}
        for mode, _ in MODES:
            web = create_app(mode, db_path=f"{tmp}/inline.db" if mode == "inline" else shared)
            base = stack.enter_context(serve_in_thread(web, free_port()))
            results[mode] = sign_up_times(base, mode, args.signups, args.rate)
            # the next mode starts once this one's e-mails are in: no backlog shared
            arrived(sink.db_path, mode, args.signups, timeout=60)

        expected = 3 * (args.signups + 1)  # every mode's sign-ups and warm-up
        started = time.monotonic()
        while sink.count()[0] < expected and time.monotonic() - started < 60:
            time.sleep(0.05)
        received, distinct = sink.count()
        waited = time.monotonic() - started
        delivery = {m: commit_to_email(shared, sink.db_path, m) for m in ("queued", "outbox")}

    pace = f"at most {args.rate:g}/s" if args.rate > 0 else "as fast as they answer"
    print(
        f"sign-up response time over HTTP, {args.signups} sign-ups per mode, one at a time "
        f"({pace}); the SMTP server answers after {args.smtp_delay:g} s"
    )
    print(f"{'':15}{'p50':>9}{'p99':>9}{'mean':>9}{'max':>9}")
    for mode, label in MODES:
        t = [x * 1000 for x in results[mode]]
        row = (percentile(t, 50), percentile(t, 99), statistics.fmean(t), max(t))
        print(f"{label:15}" + "".join(f"{v:7.1f}ms" for v in row))
    print(
        "time from the sign-up's commit to the e-mail at the SMTP server "
        f"(its {args.smtp_delay:g} s answer included)"
    )
    print(f"{'':15}{'p50':>9}{'p99':>9}{'mean':>9}{'max':>9}")
    for mode, label in MODES[1:]:
        t = [x * 1000 for x in delivery[mode]]
        if not t:
            print(f"{label:15}     none arrived")
            continue
        row = (percentile(t, 50), percentile(t, 99), statistics.fmean(t), max(t))
        print(f"{label:15}" + "".join(f"{v:7.1f}ms" for v in row))
    print(
        f"e-mails received by the SMTP sink: {received} ({distinct} distinct), of "
        f"{expected} sign-ups; the last arrived within {waited:.1f} s of the last answer"
    )


if __name__ == "__main__":
    main()
