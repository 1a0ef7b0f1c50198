"""What a failed job leaves behind: its formatted traceback, trimmed to a bound."""

from __future__ import annotations

import traceback
from types import TracebackType

# The most bytes of a traceback stored with a job or a dead letter.
TRACEBACK_LIMIT = 8 * 1024
_HEAD = 2 * 1024


def format_traceback(exc: BaseException) -> str:
    """The exception's formatted traceback (its chain included), trimmed to TRACEBACK_LIMIT
    bytes: the start and the end are kept (where it was called, where it broke)."""
    text = "".join(traceback.format_exception(exc)).rstrip("\n")
    # Valid UTF-8 (a lone surrogate, as in a file name from os.listdir, is escaped).
    return trim(text.encode("utf-8", "backslashreplace").decode())


def trim(text: str, limit: int = TRACEBACK_LIMIT) -> str:
    """`text` if it fits in `limit` UTF-8 bytes, else its start and end around a note."""
    data = text.encode()
    if len(data) <= limit:
        return text
    cut = len(data) - limit + 64  # room for the note
    head = data[:_HEAD].decode(errors="ignore")
    tail = data[_HEAD + cut :].decode(errors="ignore")
    return f"{head}\n... {cut} bytes cut ...\n{tail}"


def task_frames(exc: BaseException) -> BaseException:
    """The exception, and those it was raised from, with the frames of redismq's own code
    that called the task (its runner, its handler call, the asyncio loop it runs a
    coroutine on) left out of the start of their tracebacks: a
    user reads from their own code down. A traceback of redismq's frames alone is kept."""
    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        tb = link.__traceback__
        while tb is not None and _ours(tb):
            tb = tb.tb_next
        if tb is not None:
            link.__traceback__ = tb
        link = link.__cause__ or link.__context__
    return exc


def _ours(tb: TracebackType) -> bool:
    """A frame of redismq's, or of the asyncio loop that runs a coroutine task for it."""
    name = tb.tb_frame.f_globals.get("__name__", "")
    return name.split(".", 1)[0] in ("redismq", "asyncio")
