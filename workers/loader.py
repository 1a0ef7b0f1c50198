"""Finding the user's App from a `module:attribute` string."""

from __future__ import annotations

import importlib
import os
import sys
import types

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
    name = attr or "app"
    if not hasattr(module, name):
        raise AppNotFound(f"module {module_name!r} has no attribute {name!r}")
    app = getattr(module, name)
    if not isinstance(app, App):
        kind = "a module" if isinstance(app, types.ModuleType) else f"a {type(app).__name__}"
        raise AppNotFound(f"{spec!r} is {kind}, not a redismq App")
    return app
