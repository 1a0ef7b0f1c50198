"""The Lua scripts, each loaded once per connection pool and called by SHA."""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any

import redis
from redis.exceptions import NoScriptError

from . import cluster

NAMES = (
    "create_topic",
    "cancel",
    "registry_set",
    "expand_topic",
    "lease",
    "step",
    "purge",
    "send",
    "move_due",
    "settle",
    "retry",
    "dead",
    "replay",
    "renew",
    "release",
    "handover",
    "trim",
)


@cache
def source(name: str) -> str:
    """The text of a script, with the shared packing helpers in front."""
    folder = resources.files("redismq") / "scripts"
    return (folder / "_pack.lua").read_text() + "\n" + (folder / f"{name}.lua").read_text()


class Scripts:
    """The scripts registered on one Redis client: `scripts.settle(keys=..., args=...)`
    for one call, `scripts.run([(name, keys, args), ...])` for a pipeline of calls."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        for name in NAMES:
            setattr(self, name, client.register_script(source(name)))

    def run(self, calls: list[tuple[str, list[str], list[Any]]]) -> list[Any]:
        """Run script calls in one round trip, by SHA; if the server has lost the scripts
        (a restart), load them and run the calls again (none of them ran). On a Redis
        Cluster: one pipeline per master."""
        if cluster.is_cluster(self.client):
            return cluster.run_scripts(
                self.client,  # type: ignore[arg-type]
                calls,
                lambda name: getattr(self, name).sha,
                lambda name, keys, args: getattr(self, name)(keys=keys, args=args),
            )
        for attempt in range(2):
            pipe = self.client.pipeline(transaction=False)
            for name, keys, args in calls:
                pipe.evalsha(getattr(self, name).sha, len(keys), *keys, *args)
            try:
                return pipe.execute()
            except NoScriptError:
                if attempt:
                    raise
                for name in {c[0] for c in calls}:
                    self.client.script_load(source(name))
        raise AssertionError("unreachable")

    def __getattr__(self, name: str) -> Any:  # for type checkers: attributes are set above
        raise AttributeError(name)
