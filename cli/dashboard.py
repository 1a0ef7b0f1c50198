"""`redismq dashboard`: a live, read-only view of brokers, topics, groups, workers and the
latest dead letters.

Three parts, each testable on its own: gathering (cli.dashboard_data), drawing
(cli.dashboard_view), and here `run_dashboard()`, which refreshes a full-terminal `Live`
view every interval until `q` (read from the terminal in cbreak mode by a thread) or Ctrl-C.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import threading
import time
from collections.abc import Iterator
from typing import IO, Any

from rich.console import Console
from rich.live import Live
from rich.text import Text

from redismq import Client
from redismq.cli.dashboard_data import Gatherer
from redismq.cli.dashboard_view import render
from redismq.process import StopEvent

MAX_WORKERS = 12  # worker rows shown live (the rest are counted)


# --- running ------------------------------------------------------------------------------
class KeyReader:
    """Reads single keys from a terminal without blocking the caller: a thread reads stdin
    in cbreak mode (Ctrl-C still interrupts) and sets `quit` on `q`. Does nothing when the
    stream is not a terminal."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self.stream = stream if stream is not None else sys.stdin
        self.quit = StopEvent()  # also set by the SIGINT handler
        self._stop = threading.Event()
        self._saved: Any = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> KeyReader:
        try:
            fd = self.stream.fileno()
            tty_in = os.isatty(fd)
        except (AttributeError, OSError, ValueError):
            return self
        if not tty_in:
            return self
        import termios
        import tty

        self._saved = termios.tcgetattr(fd)
        tty.setcbreak(fd)
        self._thread = threading.Thread(target=self._read, args=(fd,), daemon=True)
        self._thread.start()
        return self

    def _read(self, fd: int) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([fd], [], [], 0.1)
            if not ready:
                continue
            key = os.read(fd, 1)
            if key in (b"q", b"Q") or not key:
                self.quit.set()
                return

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(1.0)
        if self._saved is not None:
            import termios

            with contextlib.suppress(Exception):
                termios.tcsetattr(self.stream.fileno(), termios.TCSADRAIN, self._saved)


def frames(
    client: Client, interval: float, stop: StopEvent
) -> Iterator[tuple[dict[str, Any], dict[str, Any] | None]]:
    """(data, previous) every interval until `stop` is set."""
    gatherer = Gatherer(client)
    previous: dict[str, Any] | None = None
    try:
        while not stop.is_set():
            started = time.monotonic()
            data = gatherer.gather(previous)
            yield data, previous
            previous = data
            stop.wait(max(0.0, interval - (time.monotonic() - started)))
    finally:
        gatherer.close()


@contextlib.contextmanager
def _quit_on_sigint(quit_event: StopEvent) -> Iterator[None]:
    """Ctrl-C ends the dashboard like `q` (at the next refresh, whatever it was doing),
    instead of an exception raised wherever the main thread happens to be."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, lambda signum, frame: quit_event.set())
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def run_dashboard(client: Client, interval: float = 1.0, console: Console | None = None) -> None:
    """Show the live dashboard until `q` or Ctrl-C: full-screen on a terminal (elsewhere the
    last refresh is printed when it stops)."""
    console = console or Console()
    try:
        with KeyReader() as reader, _quit_on_sigint(reader.quit):
            live = Live(
                Text("reading..."),
                console=console,
                screen=console.is_terminal,
                auto_refresh=False,
                vertical_overflow="crop",
            )
            with live:
                for data, previous in frames(client, interval, reader.quit):
                    shown = render(
                        data, previous, console.width, interval=interval, max_workers=MAX_WORKERS
                    )
                    live.update(shown, refresh=True)
    except KeyboardInterrupt:
        pass
