"""Process helpers shared by the local servers, the worker pool and the long-running
commands: how long a process lives, what names it, and what stops it."""

from __future__ import annotations

import contextlib
import functools
import math
import os
import select
import signal
import socket
import sys
import weakref
from collections.abc import Callable
from typing import Any

_PR_SET_PDEATHSIG = 1
# The host's own pid namespace (PROC_PID_INIT_INO), as /proc/self/ns/pid names it.
_HOST_PID_NAMESPACE = "pid:[4026531836]"


@functools.cache
def host_id() -> str:
    """The host part of the names a process goes by (`host:pid`): the hostname, and its pid
    namespace where that is not the host's own. Containers on the host's network (Docker's
    `--network host`, Kubernetes' hostNetwork) share its hostname but number their pids
    themselves, each from 1: without it, two of them could go by one name."""
    name = socket.gethostname()
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:  # not Linux, or no /proc
        return name
    if namespace == _HOST_PID_NAMESPACE or not namespace.startswith("pid:["):
        return name
    return f"{name}/{namespace[5:-1]}"


_pid = os.getpid()


def _forked() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_forked)


def pid() -> int:
    """This process's id, kept: `os.getpid` is a system call, and a send asks at each send
    (whether its thread's connection is this process's)."""
    return _pid


def process_id() -> str:
    """This process's name among the workers, consumers and NameServers (`host:pid`)."""
    return f"{host_id()}:{_pid}"


def _load_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # pragma: no cover - exotic libc
        return None


_prctl = _load_prctl()


def die_with_parent(signum: int = signal.SIGKILL, parent: int | None = None) -> None:
    """Ask the kernel to send `signum` to this process when its parent dies (Linux only).

    `parent` is the expected parent pid: if it is already gone, the signal is sent now.
    """
    if _prctl is None:
        return
    _prctl(_PR_SET_PDEATHSIG, int(signum), 0, 0, 0)
    if parent is not None and os.getppid() != parent:
        os.kill(os.getpid(), signum)


def say_at_once(line: str) -> None:
    """Write a line straight to stderr from a signal handler, if that cannot block: the
    handler must not wait for the log's lock (the code it interrupted, or a thread blocked
    on a full pipe, may hold it), nor on a full pipe itself."""
    with contextlib.suppress(OSError, ValueError):
        if select.select([], [2], [], 0)[1]:
            os.write(2, line.encode() + b"\n")


def stop_on_signals(stop: StopEvent) -> None:
    """SIGTERM and SIGINT set `stop`; a second one ends the process at once (exit 1), as
    a worker's does: the first waits for the main thread, which a call to a hung server
    can hold for minutes."""

    def handle(signum: int, frame: Any) -> None:
        if stop.is_set():
            say_at_once("second signal: exiting now")
            os._exit(1)
        stop.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)


class StopEvent:
    """A `threading.Event` that is only ever set, and that a signal handler may set.

    Python runs a signal handler in the main thread between two bytecodes, maybe while
    that thread holds a `threading.Event`'s lock in its `wait` or `set` (a second signal):
    the handler's `set` would wait for that lock forever. This one takes no lock: `set`
    writes a byte to a pipe that `wait` polls (every waiter wakes; it stays set). It
    belongs to the process that made it (a fork's copy shares the pipe).
    """

    def __init__(self) -> None:
        self._set = False
        self._read, self._write = os.pipe()
        os.set_blocking(self._write, False)
        for fd in (self._read, self._write):
            weakref.finalize(self, os.close, fd)

    def set(self) -> None:
        if not self._set:
            self._set = True
            with contextlib.suppress(OSError):  # the pipe is full: set already
                os.write(self._write, b"x")

    def is_set(self) -> bool:
        return self._set

    def wait(self, timeout: float | None = None) -> bool:
        """Whether it is set, once it is or after `timeout` seconds (None: no limit)."""
        if not self._set:
            # (a poll object per call: one may not be polled by two threads at once)
            poll = select.poll()
            poll.register(self._read, select.POLLIN)
            poll.poll(None if timeout is None else max(0, math.ceil(timeout * 1000)))
        return self._set
