"""Fixtures: one real local server per test session, flushed before every test."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NoReturn

import pytest
from pgcluster import postgres  # noqa: F401  (fixture: a throwaway PostgreSQL server)

from redismq import App, Client
from redismq.server import LocalServer
from tests.producers import producer_kind, producers  # noqa: F401 - fixtures: sync and async

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def server() -> Iterator[LocalServer]:
    with LocalServer() as srv:
        yield srv


@pytest.fixture
def url(server: LocalServer) -> str:
    r = server.client()
    r.flushall()
    r.script_flush()
    r.close()
    return server.url


@pytest.fixture
def client(url: str) -> Iterator[Client]:
    c = Client(url)
    yield c
    c.close()


@pytest.fixture
def app(client: Client) -> App:
    return App(client)


def skip_unless_ci(reason: str) -> NoReturn:
    """Skip where the machine lacks something the test needs; in CI (CI set) fail instead,
    so that a missing tool never turns the suite green."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (in CI this is a failure, not a skip)")
    pytest.skip(reason)


def wait_for(predicate: Callable[[], object], timeout: float = 10.0, every: float = 0.02) -> bool:
    """Poll until the predicate is true; False if it never was within the timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every)
    return bool(predicate())


class Processes:
    """Starts `redismq` commands as real processes and stops every one at the end."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def start(self, *args: str, env: dict[str, str] | None = None, **kwargs) -> subprocess.Popen:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cli.main", *args],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            **kwargs,
        )
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
            p.wait(10)
            if p.stdout:
                p.stdout.close()


@pytest.fixture
def processes() -> Iterator[Processes]:
    procs = Processes()
    yield procs
    procs.stop_all()
