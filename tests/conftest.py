"""Fixtures: one real local server per test session, flushed before every test (the
plugin's), processes started and stopped, waiting for a condition."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import NoReturn

import pytest
import redis
from pgcluster import postgres  # noqa: F401  (fixture: a throwaway PostgreSQL server)

from redismq import App, Client
from redismq.server import LocalServer
from tests.producers import producer_kind, producers  # noqa: F401 - fixtures: sync and async

ROOT = Path(__file__).resolve().parent.parent


# The project's tests use the fixtures the pytest plugin (redismq.testing) gives users, by
# their short names: one real local server per session (or --redismq-url's), emptied
# before every test.
@pytest.fixture(scope="session")
def server(redismq_server: LocalServer) -> LocalServer:
    return redismq_server


@pytest.fixture
def url(redismq_url: str) -> str:
    return redismq_url


@pytest.fixture
def client(redismq_client: Client) -> Client:
    return redismq_client


@pytest.fixture
def app(redismq_app: App) -> App:
    return redismq_app


def skip_unless_ci(reason: str) -> NoReturn:
    """Skip where the machine lacks something the test needs; in CI (CI set) fail instead,
    so that a missing tool never turns the suite green."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (in CI this is a failure, not a skip)")
    pytest.skip(reason)


@contextlib.contextmanager
def round_trips() -> Iterator[list[bytes]]:
    """What redis-py sends meanwhile, one bytes string per round trip (a pipeline is one)."""
    trips: list[bytes] = []
    sent = redis.connection.AbstractConnection.send_packed_command

    def counted(self: redis.connection.AbstractConnection, command: object, *args, **kwargs):
        trips.append(b"".join(command) if isinstance(command, list) else command)  # type: ignore[arg-type]
        return sent(self, command, *args, **kwargs)

    redis.connection.AbstractConnection.send_packed_command = counted  # type: ignore[method-assign]
    try:
        yield trips
    finally:
        redis.connection.AbstractConnection.send_packed_command = sent  # type: ignore[method-assign]


def setinfo_rule(admin: redis.Redis) -> list[str]:
    """`+client|setinfo` where the server knows the command (Redis 7.2+, Valkey; Redis 7.0
    refuses the rule): redis-py names each connection with it, and a user that may not
    leaves a refusal in the ACL log at every connection."""
    try:
        admin.execute_command("ACL", "SETUSER", "setinfo-probe", "+client|setinfo")
    except redis.ResponseError:
        return []
    admin.execute_command("ACL", "DELUSER", "setinfo-probe")
    return ["+client|setinfo"]


def denied(admin: redis.Redis) -> list[tuple[str, str]]:
    """(user, command or key) of every refusal in the server's ACL log."""
    return [(e["username"], e["object"]) for e in admin.acl_log()]


def wait_for(predicate: Callable[[], object], timeout: float = 10.0, every: float = 0.02) -> bool:
    """Poll until the predicate is true; False if it never was within the timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every)
    return bool(predicate())


@contextlib.contextmanager
def unread_pipe() -> Iterator[int]:
    """The write end of a pipe nobody reads (both ends closed at the end)."""
    unread, log = os.pipe()
    try:
        yield log
    finally:
        os.close(unread)
        os.close(log)


def code_after_sigterm(proc: subprocess.Popen, timeout: float) -> int | None:
    """The exit code of `proc` after a SIGTERM, None if it did not exit within `timeout`."""
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        return None


def fill_pipe(fd: int) -> None:
    """Fill the pipe `fd` writes to up to its last byte: any write to it then blocks."""
    # A file description of its own: O_NONBLOCK on `fd`'s would be the writer's too.
    extra = os.open(f"/proc/self/fd/{fd}", os.O_WRONLY | os.O_NONBLOCK)
    try:
        for size in (4096, 1):
            with contextlib.suppress(BlockingIOError):
                while True:
                    os.write(extra, b"." * size)
    finally:
        os.close(extra)


class Processes:
    """Starts `redismq` commands as real processes and stops every one at the end."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def start(
        self,
        *args: str,
        env: dict[str, str] | None = None,
        prefix: Sequence[str] = (),
        **kwargs,
    ) -> subprocess.Popen:
        """`redismq ARGS` as a process (run by `prefix`, a command that runs another)."""
        proc = subprocess.Popen(
            [*prefix, sys.executable, "-m", "redismq.cli.main", *args],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
            # (a long-running process whose output nobody reads passes stdout=DEVNULL or a
            # file: a full pipe, 64 KiB, blocks it at its next log line)
            stdout=kwargs.pop("stdout", subprocess.PIPE),
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
