"""A long-running command stops on its signal wherever the signal finds it.

Python runs a signal handler in the main thread between two bytecodes, so a handler that
takes a lock can find it held by the very code it interrupted: a `threading.Event` set by
the handler while that thread was inside the same event's `wait` or `set` (a second
signal, the supervisor's stop beside a user's SIGTERM) waits for the lock forever, and the
command hangs until SIGKILL. These tests run each command with a storm of its stop signal
raised at every call its main thread makes once the handler is in place, so that some
land inside every such step.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from redismq.server import LocalServer
from tests.conftest import ROOT

# Run as the command's `python -c` prelude: once the command installs its handler for the
# signal, the storm starts at its main thread's first call of a function named in AT (an
# event's `wait` or `set`, say): the process sends itself that signal at each call its main
# thread makes, FIRES times.
STORM = """
import os, signal, sys
SIGNUM, FIRES, AT = {signum}, {fires}, {at!r}
fired = 0
def storm(frame, event, arg):
    global fired
    fired += 1
    if fired > FIRES:
        sys.setprofile(None)
        return
    os.kill(os.getpid(), SIGNUM)
def arm(frame, event, arg):
    if event == "call" and frame.f_code.co_name in AT:
        sys.setprofile(storm)
install = signal.signal
def watched(signum, handler):
    previous = install(signum, handler)
    if signum == SIGNUM and callable(handler):
        sys.setprofile(arm)
    return previous
signal.signal = watched
from redismq.cli.main import main
sys.argv[0] = "redismq"
main()
"""


def run_in_a_storm(
    args: list[str], signum: int, at: tuple[str, ...] = ("wait",), fires: int = 300
) -> subprocess.CompletedProcess:
    """`redismq ARGS` in a storm of `signum` (see STORM); fails the test if it hangs."""
    code = STORM.format(signum=int(signum), fires=fires, at=at)
    try:
        return subprocess.run(
            [sys.executable, "-c", code, *args],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=20,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"redismq {' '.join(args)} hung in a storm of signal {signum}: {exc.stderr!r}")


# The nameserver and the relay end at once on a second SIGTERM/SIGINT: in a storm they exit
# 1 at the second. (That second would also end one whose first handler hung on a lock, so
# the lock-free stop they share is checked by the worker's and the dashboard's storms.)
SECOND_SIGNAL = b"second signal: exiting now"


def test_the_nameserver_stops_in_a_storm_of_sigterm(url):
    done = run_in_a_storm(["nameserver", "--url", url, "--interval", "0.2"], signal.SIGTERM)
    assert done.returncode == 1 and SECOND_SIGNAL in done.stderr, done.stderr


@pytest.mark.parametrize("at", ["wait", "set"])
def test_a_worker_stops_in_a_storm_of_its_supervisors_stop_signal(url, at):
    """A supervisor's stop beside a user's signal (`kill -TERM -PGID`) reaches a worker that
    may be stopping already; `set`: the storm starts as a burst worker, done, stops itself."""
    from redismq.workers.worker import STOP_SIGNAL

    args = ["worker", "tests.apps.loglines_app:app", "--url", url, "--processes", "1"]
    done = run_in_a_storm([*args, "--burst"] if at == "set" else args, STOP_SIGNAL, (at,))
    assert done.returncode == 0, done.stderr


def test_the_outbox_relay_stops_in_a_storm_of_sigint(url, tmp_path):
    db = f"sqlite:///{tmp_path / 'outbox.db'}"
    subprocess.run(
        [sys.executable, "-m", "redismq.cli.main", "outbox", "create", db], check=True, cwd=ROOT
    )
    done = run_in_a_storm(["outbox", "relay", db, "--url", url], signal.SIGINT)
    assert done.returncode == 1 and SECOND_SIGNAL in done.stderr, done.stderr


def test_the_dashboard_stops_in_a_storm_of_sigint(url):
    done = run_in_a_storm(["dashboard", "--url", url, "--interval", "0.2"], signal.SIGINT)
    assert done.returncode == 0, done.stderr


def test_a_second_sigterm_ends_a_nameserver_held_by_a_hung_meta_redis(processes):
    """The first signal waits for the main thread, which a hung meta Redis holds for
    minutes (a 30 s socket timeout, retried); a second ends the process at once, as a
    worker's does."""
    with LocalServer() as meta:
        proc = processes.start("nameserver", "--url", meta.url, "--interval", "0.2")
        assert "checking brokers" in proc.stdout.readline()
        os.kill(meta.pid, signal.SIGSTOP)
        try:
            time.sleep(0.5)  # its next call waits for the hung server
            proc.send_signal(signal.SIGTERM)
            time.sleep(0.2)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(10) == 1
        finally:
            os.kill(meta.pid, signal.SIGCONT)
