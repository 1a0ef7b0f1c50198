"""Finding the user's App from a `module:attribute` string."""

from __future__ import annotations

import importlib
import os
import sys

from redismq import App


class AppNotFound(ValueError):
    """The `module:attribute` string does not name an importable App."""


def load_app(spec: str) -> App:
    """Import `module:attribute` (attribute defaults to `app`) from the current directory."""
    module_name, _, attr = spec.partition(":")
    if not module_name:
        raise AppNotFound(f"expected MODULE:APP (e.g. myproject.tasks:app), not {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise AppNotFound(f"cannot import {module_name!r}: {exc}") from None
    app = getattr(module, attr or "app", None)
    if not isinstance(app, App):
        raise AppNotFound(f"{spec!r} is not a redismq App")
    return app
