"""What every `redismq` command shares: the consoles, the --url option, one-line errors and
how times are shown."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from functools import wraps
from typing import Any

import click
from rich.console import Console
from rich.text import Text

from redismq import RedisMQError
from redismq.urls import DEFAULT_URL

err = Console(stderr=True, highlight=False)
out = Console(highlight=False)

url_option = click.option(
    "--url",
    envvar="REDISMQ_URL",
    default=DEFAULT_URL,
    show_default=True,
    help="URL of the meta Redis (env REDISMQ_URL).",
)


def friendly(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Report a RedisMQError as one red line and exit 1, never as a traceback."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except RedisMQError as exc:
            err.print(Text.assemble(("error:", "red"), " ", str(exc)), soft_wrap=True)
            sys.exit(1)

    return wrapper


def when(ms: int | float | None) -> str:
    """A time in milliseconds since the epoch as a local date and time ('-' for none)."""
    if not ms:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000)) + f".{int(ms) % 1000:03d}"


def iso(ms: int | float | None) -> str | None:
    """A time in milliseconds since the epoch as ISO 8601 UTC, for JSON output."""
    if not ms:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms / 1000)) + f".{int(ms) % 1000:03d}Z"
