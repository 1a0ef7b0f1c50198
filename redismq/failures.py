"""What a failed job leaves behind: its formatted traceback, trimmed to a bound."""

from __future__ import annotations

import traceback

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
