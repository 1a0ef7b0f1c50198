"""Logging set-up of worker processes: text or one JSON object per line.

The one line per finished job (`redismq.processing.OutcomeLog`) is the bulk of a busy
worker's output: it skips `logging`'s per-record work (a record, a lock, a write and a
flush each) and is written in batches by `WorkerHandler`, in the same format as a record.
A batch goes in writes of whole lines of at most PIPE_BUF bytes: a pool's processes share
their parent's stderr, and a pipe keeps such a write whole among the other processes'.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import json
import logging
import math
import os
import select
import sys
import threading
import time
from collections.abc import Iterator
from json.encoder import encode_basestring_ascii
from typing import Any, AnyStr

from redismq import process
from redismq.processing import OutcomeLog, outcome_fields, outcome_text

TEXT_FORMAT = "%(asctime)s %(levelname)s %(process)d %(name)s: %(message)s"
# Batched lines are written at least this often (seconds), before any record the handler
# emits, when it is flushed (at exit, on stop) and once this many are waiting.
FLUSH_EVERY = 0.1
MAX_PENDING = 1000
# How long a worker's last flush of its log waits for a reader that does not read.
FLUSH_TIMEOUT = 5.0
# The text lines' ends after the message id, by (task, attempt, duration), are kept up to
# this many (fast jobs repeat a few durations; writing a float is a third of a line's cost).
MAX_ENDS = 4096
# A write of at most this many bytes to a pipe is never split, nor interleaved with another
# process's write (POSIX; 4096 on Linux).
PIPE_BUF = getattr(select, "PIPE_BUF", 512)
# Time stamps and lines' heads are kept up to this many (a few are in use at a time).
MAX_KEPT = 64
_MILLIS = [f"{n:03d}" for n in range(1000)]


class JsonFormatter(logging.Formatter):
    """One JSON object per record, with the fields a handler passed in `extra`."""

    STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        data = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        data.update({k: v for k, v in record.__dict__.items() if k not in self.STANDARD})
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str)


def _json_value(value: Any) -> str:
    """`value` as `json.dumps(value, default=str)` writes it."""
    if isinstance(value, str):
        return encode_basestring_ascii(value)
    if type(value) is int or (type(value) is float and math.isfinite(value)):
        return repr(value)
    return json.dumps(value, default=str)


class WorkerHandler(logging.StreamHandler):
    """A stream handler (stderr) that also takes done lines without a record (`done`).

    Lines and records are queued in order and written by one thread: a record at once, the
    lines every `FLUSH_EVERY` seconds, and all on `flush` (at exit and when the worker
    stops). A thread that logs never writes: a full pipe (a log nobody reads) would hold it
    there for good, and the one that writes must not be the lease keeper, nor the main
    thread that stops the process.
    """

    def __init__(self, fmt: str = "text") -> None:
        super().__init__()
        self.json = fmt == "json"
        self.setFormatter(JsonFormatter() if self.json else logging.Formatter(TEXT_FORMAT))
        self._pending: collections.deque[str] = collections.deque()
        # Kept parts of lines, by what they depend on only (threads make lines at once):
        # time stamps by second, text lines' heads by millisecond and logger.
        self._stamps: dict[int, str] = {}
        self._heads: dict[tuple[int, int, str], str] = {}
        self._ends: dict[tuple[str, int, float], str] = {}
        self._flusher: threading.Thread | None = None
        self._starting = threading.Lock()
        self._done = threading.Event()
        self._wake = threading.Event()  # a record waits: write now

    # -- lines without a record ----------------------------------------------------------
    def done(self, logger: str, message_id: str, task: str, attempt: int, took: float) -> None:
        """Queue the line OutcomeLog's record of a done job of `logger` would give (no
        exception, no other handler or filter)."""
        now = time.time()
        if self.json:
            text = self._json_line(now, logger, message_id, task, attempt, took)
        else:
            second = int(now)
            at = (second, int((now - second) * 1000), logger)  # a record's msecs
            head = self._heads.get(at) or self._head(at)
            end = self._ends.get((task, attempt, took)) or self._end(task, attempt, took)
            text = head + message_id + end
        self._pending.append(text)
        if len(self._pending) >= MAX_PENDING:
            self.flush()
        elif self._flusher is None:
            self._start_flusher()

    def _json_line(
        self, now: float, logger: str, message_id: str, task: str, attempt: int, took: float
    ) -> str:
        """A done line as `JsonFormatter` writes its record."""
        second = int(now)
        millis = _MILLIS[int((now - second) * 1000)]
        message = outcome_text(message_id, task, attempt, took, "done")
        fields = {"id": message_id, "task": task, "attempt": attempt, "duration": took}
        text = (
            f'{{"time": "{self._stamp(second)}.{millis}Z", "level": "INFO", '
            f'"logger": {encode_basestring_ascii(logger)}, '
            f'"message": {encode_basestring_ascii(message)}'
        )
        for key, value in fields.items():
            text += f", {encode_basestring_ascii(key)}: {_json_value(value)}"
        return text + ', "outcome": "done"}\n'

    def _head(self, at: tuple[int, int, str]) -> str:
        """A text line's start, up to the message id, at (second, millisecond, logger)."""
        if len(self._heads) >= MAX_KEPT:
            self._heads.clear()
        second, millis, logger = at
        head = f"{self._stamp(second)},{_MILLIS[millis]} INFO {process.pid()} {logger}: id="
        self._heads[at] = head
        return head

    def _stamp(self, second: int) -> str:
        """The time stamp of a second, as the handler's formatter writes it."""
        stamp = self._stamps.get(second)
        if stamp is None:
            if len(self._stamps) >= MAX_KEPT:
                self._stamps.clear()
            stamp = self._stamps[second] = self._stamp_of(second)
        return stamp

    def _end(self, task: str, attempt: int, took: float) -> str:
        """A text line's end, after the message id."""
        if len(self._ends) >= MAX_ENDS:
            self._ends.clear()
        end = f" {outcome_fields(task, attempt, took, 'done')}\n"
        self._ends[(task, attempt, took)] = end
        return end

    def _stamp_of(self, second: int) -> str:
        if self.json:
            return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return time.strftime(logging.Formatter.default_time_format, time.localtime(second))

    def _start_flusher(self) -> None:
        with self._starting:  # not the write lock: a thread may hold that, writing
            if self._flusher is not None:
                return
            self._flusher = threading.Thread(
                target=self._flush_often, name="log-lines", daemon=True
            )
            self._flusher.start()

    def _flush_often(self) -> None:
        while not self._done.is_set():
            self._wake.wait(FLUSH_EVERY)
            self._wake.clear()
            if self._pending:
                self.flush()

    def _write_pending(self) -> None:
        """Write the queued lines (the caller holds the handler's lock)."""
        if not self._pending:
            return
        pending = self._pending
        lines = [pending.popleft() for _ in range(len(pending))]
        try:
            for chunk in whole_lines("".join(lines), PIPE_BUF):
                self.stream.write(chunk)
                self.stream.flush()
        except Exception:  # as a record's write failure: reported, never raised
            self.handleError(logging.makeLogRecord({"msg": lines[0].rstrip("\n")}))

    # -- the StreamHandler's part ---------------------------------------------------------
    def handle(self, record: logging.LogRecord) -> bool:
        """Queue a record behind the lines for the writing thread (without the handler's
        lock, which the writing thread holds while a full pipe keeps it waiting)."""
        passed = self.filter(record)
        if isinstance(passed, logging.LogRecord):  # Python 3.12+: a filter may replace it
            record = passed
        if not passed:
            return False
        self.emit(record)
        return True

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._pending.append(self.format(record) + self.terminator)
        except Exception:
            self.handleError(record)
        if self._done.is_set():  # closed (at exit): no thread writes for it any more
            self.flush()
            return
        self._wake.set()
        if self._flusher is None:
            self._start_flusher()

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            self._write_pending()
            try:
                super().flush()
            except Exception:  # a reader gone (EPIPE): reported as a record's, never raised
                self.handleError(logging.makeLogRecord({"msg": "flushing the log"}))

    def forked(self) -> None:
        """In a process forked from this one: none of its queued lines (they are its own to
        write), no thread writing them, locks of its own."""
        self.createLock()
        self._pending = collections.deque()
        self._flusher = None
        self._starting = threading.Lock()
        self._done = threading.Event()
        self._wake = threading.Event()

    def close(self) -> None:
        self._done.set()
        self._wake.set()
        self.flush()
        super().close()


def whole_lines(text: str, most: int) -> Iterator[str]:
    """`text` (whole lines) in pieces of whole lines of at most `most` bytes in UTF-8 (a
    longer line alone)."""
    if text.isascii():
        yield from _cut(text, "\n", most)
    else:  # cut its bytes: a newline is never a part of another character's bytes
        yield from (piece.decode() for piece in _cut(text.encode(), b"\n", most))


def _cut(text: AnyStr, newline: AnyStr, most: int) -> Iterator[AnyStr]:
    start, end = 0, len(text)
    while end - start > most:
        cut = text.rfind(newline, start, start + most) + 1
        if cut == 0:  # no line ends within `most`: the line goes alone
            cut = text.find(newline, start + most) + 1 or end
        yield text[start:cut]
        start = cut
    if start < end:
        yield text[start:]


def setup_logging(level: str = "INFO", fmt: str = "text") -> None:
    """Configure the root logger of this process; done lines go through a `WorkerHandler`."""
    handler = WorkerHandler(fmt)
    root = logging.getLogger()
    for old in root.handlers:
        if isinstance(old, WorkerHandler):
            old.close()
    root.handlers[:] = [handler]
    root.setLevel(level)
    OutcomeLog.writer = handler
    _follow_forks()


@functools.cache
def _follow_forks() -> None:
    """Keep a job's fork (multiprocessing's default on Linux) apart from the worker's log:
    the fork waits for a write in progress (a child must not inherit stderr's buffer
    locked), and the child starts with none of the worker's queued lines."""

    def writer() -> WorkerHandler | None:
        handler = OutcomeLog.writer
        return handler if isinstance(handler, WorkerHandler) else None

    def before() -> None:
        if (handler := writer()) is not None:
            handler.acquire()

    def in_parent() -> None:
        if (handler := writer()) is not None:
            handler.release()

    def in_child() -> None:
        if (handler := writer()) is not None:
            handler.forked()

    os.register_at_fork(before=before, after_in_parent=in_parent, after_in_child=in_child)


def flush_logs(timeout: float = FLUSH_TIMEOUT) -> None:
    """Write every line still queued, and what stdout and stderr hold (before the process
    exits or execs), waiting at most `timeout` seconds: a log nobody reads (a full pipe)
    would hold the flush, and the exit, for good."""
    thread = threading.Thread(target=_flush_handlers, name="log-flush", daemon=True)
    thread.start()
    thread.join(timeout)


def _flush_handlers() -> None:
    for handler in logging.getLogger().handlers:
        handler.flush()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # closed, or a reader gone
            stream.flush()
