"""The Lua scripts, each loaded once per connection pool and called by SHA."""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any

import redis

NAMES = (
    "create_topic",
    "cancel",
    "registry_set",
    "expand_topic",
    "lease",
    "step",
    "send",
    "move_due",
    "settle",
    "retry",
    "dead",
    "replay",
    "renew",
    "release",
    "trim",
)


@cache
def source(name: str) -> str:
    """The text of a script, with the shared packing helpers in front."""
    folder = resources.files("redismq") / "scripts"
    return (folder / "_pack.lua").read_text() + "\n" + (folder / f"{name}.lua").read_text()


class Scripts:
    """The scripts registered on one Redis client; `scripts.settle(keys, args, client=pipe)`."""

    def __init__(self, client: redis.Redis) -> None:
        for name in NAMES:
            setattr(self, name, client.register_script(source(name)))

    def __getattr__(self, name: str) -> Any:  # for type checkers: attributes are set above
        raise AttributeError(name)
