"""What a Redis Cluster broker needs beyond a plain Redis: queue hash tags that spread a
topic's queues over the masters, pipelines run per node, and the topology for status.

The slot routing, MOVED/ASK and topology refresh are redis-py's `RedisCluster`; this
module never routes by itself, it only asks the client which node serves a key now.
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

import redis
from redis.cluster import RedisCluster
from redis.crc import key_slot
from redis.exceptions import (
    AskError,
    ClusterDownError,
    NoScriptError,
    TryAgainError,
)

log = logging.getLogger("redismq.cluster")

# How many tag numbers are tried to find one whose slot lands on a wanted master: with M
# masters each try hits with probability about 1/M.
MAX_TAG_TRIES = 100_000
# A reply that means the command did not run on that node (it is safe to send it again).
NOT_RUN = (AskError, TryAgainError, ClusterDownError)


def is_cluster(conn: Any) -> bool:
    """Whether the client talks to a Redis Cluster."""
    # Not isinstance: RedisCluster derives from a typing Protocol, whose isinstance check
    # runs in Python (a few µs, at every send).
    return RedisCluster in type(conn).__mro__


def shard_tag(topic: str, number: int) -> str:
    """The hash tag of a topic's queues on one cluster master: ``<topic>~<n>``."""
    return f"{topic}~{number}"


def slot_of(tag: str) -> int:
    """The cluster slot of a hash tag."""
    return int(key_slot(f"{{{tag}}}".encode()))


def master_ranges(slots: dict[tuple[int, int], dict[str, Any]]) -> dict[str, list[tuple[int, int]]]:
    """Master node name (host:port) -> the slot ranges it serves, from redis-py's parsed
    CLUSTER SLOTS (``conn.cluster_slots()``, sync or asyncio)."""
    ranges: dict[str, list[tuple[int, int]]] = {}
    for (start, end), nodes in slots.items():
        host, port = nodes["primary"][:2]
        ranges.setdefault(f"{_text(host)}:{port}", []).append((int(start), int(end)))
    return ranges


def _owner(ranges: dict[str, list[tuple[int, int]]], slot: int) -> str | None:
    for name, spans in ranges.items():
        if any(a <= slot <= b for a, b in spans):
            return name
    return None


def choose_shards(
    ranges: dict[str, list[tuple[int, int]]],
    topic: str,
    new: Iterable[int],
    existing: dict[int, str],
) -> dict[int, str]:
    """Hash tags for a topic's `new` queues on a cluster whose masters serve `ranges`,
    given the tags of its queues already there: each new queue goes to the master holding
    the fewest of the topic's queues, with the tag the topic already uses on that master (so
    one blocking read serves them all), or a fresh tag whose slot lands on it."""
    if not ranges:
        raise redis.ConnectionError("the cluster serves no slots")
    tag_of_master: dict[str, str] = {}
    counts: Counter[str] = Counter(dict.fromkeys(sorted(ranges), 0))
    for tag in existing.values():
        owner = _owner(ranges, slot_of(tag))
        if owner is not None:
            counts[owner] += 1
            tag_of_master.setdefault(owner, tag)
    used = {int(t.rsplit("~", 1)[1]) for t in existing.values() if t.rsplit("~", 1)[1].isdigit()}
    out = {}
    for q in new:
        master = min(sorted(ranges), key=lambda m: counts[m])
        if master not in tag_of_master:
            tag_of_master[master] = _tag_on(ranges, master, topic, used)
        out[q] = tag_of_master[master]
        counts[master] += 1
    return out


def _tag_on(ranges: dict[str, list[tuple[int, int]]], master: str, topic: str, used: set) -> str:
    for n in range(MAX_TAG_TRIES):
        if n in used:
            continue
        tag = shard_tag(topic, n)
        if _owner(ranges, slot_of(tag)) == master:
            used.add(n)
            return tag
    raise redis.ResponseError(f"no hash tag of topic {topic!r} lands on master {master}")


def node_client(conn: RedisCluster, key: str) -> redis.Redis:
    """The plain client of the master that serves the key's slot now."""
    node = conn.get_node_from_key(key)
    return conn.get_redis_connection(node)


def server_of(conn: Any, key: str) -> redis.Redis:
    """The one server that holds `key`: on a cluster the master of its slot (for SCAN and
    multi-key commands within one hash tag), else the client itself."""
    return node_client(conn, key) if is_cluster(conn) else conn


def refresh(conn: RedisCluster) -> None:
    """Re-read the cluster's topology (after a failover or a slot move); best effort."""
    with contextlib.suppress(redis.RedisError, Exception):
        conn.nodes_manager.initialize()


class NodePipeline:
    """A plain pipeline on the master that serves one slot (so it may hold keyless commands
    like TIME beside that slot's keys); when the node fails or redirects, the cluster's
    topology is re-read before the error is raised, so the next call goes where the slot
    is now."""

    def __init__(self, conn: RedisCluster, key: str, transaction: bool = False) -> None:
        self._conn = conn
        self._pipe = node_client(conn, key).pipeline(transaction=transaction)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pipe, name)

    def execute(self, raise_on_error: bool = True) -> list[Any]:
        try:
            replies = self._pipe.execute(raise_on_error=raise_on_error)
        except (redis.ConnectionError, redis.TimeoutError, *NOT_RUN):
            refresh(self._conn)
            raise
        if any(isinstance(r, NOT_RUN) for r in replies):
            refresh(self._conn)
        return replies


def on_node(conn: RedisCluster, key: str, fill: Callable[[Any], None]) -> list[Any]:
    """Run a pipeline built by `fill` on the master that serves `key` (all its commands
    must touch that key's slot, or none), so that a WAIT at its end waits for the writes
    before it on the same connection. A redirection (the slot moved, nothing ran) is
    followed once after re-reading the topology."""
    for attempt in range(2):
        pipe = node_client(conn, key).pipeline(transaction=False)
        fill(pipe)
        try:
            replies = pipe.execute(raise_on_error=False)
        except (redis.ConnectionError, redis.TimeoutError):
            refresh(conn)
            raise
        first = next((r for r in replies if isinstance(r, Exception)), None)
        if isinstance(first, NOT_RUN) and attempt == 0:
            refresh(conn)
            continue
        if first is not None:
            raise first
        return replies
    raise AssertionError("unreachable")


def run_scripts(
    conn: RedisCluster,
    calls: list[tuple[str, list[str], list[Any]]],
    sha: Callable[[str], str],
    single: Callable[[str, list[str], list[Any]], Any],
) -> list[Any]:
    """Script calls by SHA in one pipeline per master (redis-py's cluster pipeline refuses
    EVALSHA); a call's error reply is returned in its place. A call the node refused without
    running it (its slot moved, or the node lost its scripts) is sent again on its own
    through the cluster client, which follows redirections and loads scripts."""
    by_node: dict[str, list[int]] = {}
    clients: dict[str, redis.Redis] = {}
    for i, (_, keys, _) in enumerate(calls):
        node = conn.get_node_from_key(keys[0])
        by_node.setdefault(node.name, []).append(i)
        clients[node.name] = conn.get_redis_connection(node)
    results: list[Any] = [None] * len(calls)
    again: list[int] = []
    for name, indexes in by_node.items():
        pipe = clients[name].pipeline(transaction=False)
        for i in indexes:
            script, keys, args = calls[i]
            pipe.evalsha(sha(script), len(keys), *keys, *args)
        try:
            replies = pipe.execute(raise_on_error=False)
        except (redis.ConnectionError, redis.TimeoutError):
            refresh(conn)
            raise
        for i, reply in zip(indexes, replies, strict=True):
            if isinstance(reply, (*NOT_RUN, NoScriptError)):
                again.append(i)
            else:
                results[i] = reply  # an error reply too: the caller decides
    if again:
        refresh(conn)
    for i in again:
        try:
            results[i] = single(*calls[i])
        except redis.ResponseError as exc:
            results[i] = exc
    return results


def topology(conn: RedisCluster) -> list[dict[str, Any]]:
    """The cluster's masters now: address, slot ranges and replicas (address, link up)."""
    masters: dict[str, dict[str, Any]] = {}
    # redis-py types CLUSTER SLOTS as a list; RedisCluster parses it into a dict of ranges
    slots = conn.cluster_slots()
    for (start, end), nodes in sorted(slots.items()):  # type: ignore[attr-defined]
        name = f"{_text(nodes['primary'][0])}:{nodes['primary'][1]}"
        entry = masters.setdefault(name, {"node": name, "slots": [], "replicas": []})
        entry["slots"].append([int(start), int(end)])
        for r in nodes.get("replicas", []):
            rname = f"{_text(r[0])}:{r[1]}"
            if rname not in entry["replicas"]:
                entry["replicas"].append(rname)
    return [masters[n] for n in sorted(masters)]


def master_of_tag(nodes: list[dict[str, Any]], tag: str) -> str | None:
    """Which master of a `topology()` serves a hash tag."""
    slot = slot_of(tag)
    for m in nodes:
        if any(a <= slot <= b for a, b in m["slots"]):
            return str(m["node"])
    return None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
