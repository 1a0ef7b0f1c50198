"""How long a sign-up takes to answer with the welcome e-mail sent inline versus queued.

Starts everything it needs on loopback ports (a local Redis/Valkey unless --url or
$REDISMQ_URL is given, the SMTP sink, a worker process and two uvicorn servers: one per
mode, each with its own SQLite file), signs up the same number of users through each over
real HTTP, one after the other, and prints both response times. The SMTP sink waits
--smtp-delay seconds before accepting each e-mail, as a real mail server or mail API does.

Run it: python -m examples.registration.measure --signups 50 --smtp-delay 0.3
"""

from __future__ import annotations

import argparse
import contextlib
import os
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


def sign_up_times(base_url: str, prefix: str, n: int) -> list[float]:
    """Seconds each of n sign-ups took, client side, one after the other."""
    import httpx

    times = []
    with httpx.Client(base_url=base_url, timeout=30) as http:
        http.post("/api/signup", json={"email": f"warmup-{prefix}@example.com", "name": "W"})
        for i in range(n):
            started = time.perf_counter()
            answer = http.post(
                "/api/signup", json={"email": f"{prefix}{i}@example.com", "name": f"User {i}"}
            )
            times.append(time.perf_counter() - started)
            answer.raise_for_status()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--signups", type=int, default=50)
    parser.add_argument("--smtp-delay", type=float, default=0.3)
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
        os.environ.update(
            REDISMQ_URL=url,
            REDISMQ_NAMESPACE=f"measure{os.getpid()}",
            SMTP_HOST=sink.host,
            SMTP_PORT=str(sink.port),
            REGISTRATION_DB=f"{tmp}/queued.db",
        )
        from .tasks import TOPIC, app
        from .web import create_app, serve_in_thread

        app.client.create_topic(TOPIC)
        worker = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "worker", "examples.registration.tasks:app"]
            + ["--processes", "1", "--concurrency", "16", "--log-level", "ERROR"],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        stack.callback(worker.wait, 30)
        stack.callback(worker.terminate)

        results = {}
        for mode in ("inline", "queued"):
            web = create_app(mode, db_path=f"{tmp}/{mode}.db")
            base = stack.enter_context(serve_in_thread(web, free_port()))
            results[mode] = sign_up_times(base, mode, args.signups)

        expected = args.signups + 1  # the queued mode's sign-ups and its warm-up
        started = time.monotonic()
        while sink.count()[0] < 2 * expected and time.monotonic() - started < 60:
            time.sleep(0.05)
        received, distinct = sink.count()
        waited = time.monotonic() - started

    print(
        f"sign-up response time over HTTP, {args.signups} sign-ups per mode, one at a time; "
        f"the SMTP server answers after {args.smtp_delay:g} s"
    )
    print(f"{'':14}{'median':>9}{'mean':>9}{'p95':>9}{'max':>9}")
    for mode, label in (("inline", "e-mail inline"), ("queued", "e-mail queued")):
        t = [x * 1000 for x in results[mode]]
        row = (statistics.median(t), statistics.fmean(t), percentile(t, 95), max(t))
        print(f"{label:14}" + "".join(f"{v:7.1f}ms" for v in row))
    print(
        f"e-mails received by the SMTP sink: {received} ({distinct} distinct), of "
        f"{2 * expected} sign-ups; the queued ones arrived within "
        f"{waited:.1f} s of the last answer"
    )


if __name__ == "__main__":
    main()
