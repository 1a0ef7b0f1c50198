"""What `redismq dashboard` shows, gathered: `Gatherer.gather()` reads everything with
read-only commands (INFO, TIME, XINFO, XLEN, XPENDING, XREVRANGE, ZCARD, HGETALL, HVALS...),
one pipeline per broker, and `rates()` turns two reads into rates. A broker that does not
answer is reported as down (its queues as unreachable); it never raises for that.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import redis
from redis.exceptions import RedisClusterException

from redismq import Client, RedisMQError
from redismq.backlog import (
    GROUP_COMMANDS,
    QUEUE_COMMANDS,
    GroupCounts,
    QueueCounts,
    count_unknown_lag,
    parse_queue,
    queue_commands,
    topic_backlog,
)
from redismq.brokers import list_brokers
from redismq.cluster import is_cluster
from redismq.relay import outbox_status
from redismq.routing import DEFAULT_BROKER
from redismq.status import cluster_status, live_workers, mark_unconsumed
from redismq.urls import connect, mask_url

DEAD_LETTERS = 8  # latest dead letters shown
HISTORY = 60  # rate samples kept for the sparklines
REPLICA_TIMEOUT = 1.0


# --- gathering (read-only) ---------------------------------------------------------------
class Gatherer:
    """Reads the state of a system; keeps its replica connections between two reads."""

    def __init__(self, client: Client, dead_letters: int = DEAD_LETTERS) -> None:
        self.client = client
        self.dead_letters = dead_letters
        self._replicas: dict[str, redis.Redis] = {}

    def gather(self, previous: dict[str, Any] | None = None) -> dict[str, Any]:
        """Everything the dashboard shows, as plain data, with rates against `previous`.

        Never raises for a broker that is down; when the meta Redis itself does not answer,
        the data has an error and the topics and workers of `previous`.
        """
        client = self.client
        data: dict[str, Any] = {
            "time": time.time(),
            "meta": mask_url(client.url),
            "namespace": client.namespace,
            "brokers": [],
            "topics": [],
            "workers": [],
            "dead_letters": [],
            "errors": [],
        }
        try:
            with client.errors():
                registered = list_brokers(client)
                names = [t for t in client.router.topic_names()]
                topics = [client.router.topic(t) for t in names]
                groups = {t: client.router.groups(t) for t in names}
                data["workers"] = live_workers(client)
                data["outboxes"] = outbox_status(client)
        except (redis.RedisError, RedisMQError) as exc:
            data["errors"].append(f"meta Redis: {exc}")
            data["brokers"] = [dict(b, up=False) for b in (previous or {}).get("brokers", [])]
            for key in ("topics", "workers", "dead_letters"):
                data[key] = (previous or {}).get(key, [])
            data["rates"] = rates(previous, data)
            return data

        brokers = {b.name: b for b in registered}
        placed = {b for t in topics for b in t.placement}
        names_of_brokers = sorted(set(brokers) | placed) or [DEFAULT_BROKER]
        queue_rows: dict[tuple[str, int], dict[str, Any]] = {}
        for name in names_of_brokers:
            row, queues = self._broker(name, brokers.get(name), topics, groups)
            data["brokers"].append(row)
            queue_rows.update(queues)
            data["dead_letters"].extend(row.pop("_dead", []))
        data["topics"] = [_sum_topic(t, groups[t.name], queue_rows) for t in topics]
        mark_unconsumed(data["topics"], data["workers"])
        data["dead_letters"].sort(key=lambda d: d["failed_at"], reverse=True)
        del data["dead_letters"][self.dead_letters :]
        data["rates"] = rates(previous, data)
        return data

    def _broker(
        self, name: str, info: Any, topics: list[Any], groups: dict[str, list[str]]
    ) -> tuple[dict[str, Any], dict[tuple[str, int], dict[str, Any]]]:
        """One broker's row, and the counts of each of its queues (one pipeline)."""
        client = self.client
        url = info.url if info is not None else client.url
        row: dict[str, Any] = {
            "name": name,
            "url": mask_url(url),
            "state": info.state if info is not None else "active",
            "up": False,
            "role": None,
            "address": (info.health.get("address") if info is not None else None) or "",
            "memory": None,
            "ops": None,
            "replicas": [],
            "error": None,
        }
        mine = [(t, q) for t in topics for q, b in enumerate(t.placement) if b == name]
        try:
            conn = client.router.broker(name).redis if info is not None else client.meta
            # one pipeline: INFO, TIME and every count of the broker's queues
            pipe = conn.pipeline(transaction=False)
            clustered = is_cluster(conn)
            head = cluster_head(conn) if clustered else []
            if not clustered:  # (a cluster pipeline refuses keyless commands)
                pipe.time()
                pipe.info("memory")
                pipe.info("stats")
                pipe.info("replication")
            for t, q in mine:
                queue_commands(pipe, client.router.queue_keys(t.name, q), groups[t.name])
                for g in groups[t.name]:
                    pipe.xrevrange(
                        client.router.queue_keys(t.name, q).dead(g), count=self.dead_letters
                    )
            replies = head + pipe.execute(raise_on_error=False)
            if clustered:
                row["cluster"] = cluster_status(client, name)
        except (redis.RedisError, RedisMQError, OSError, RedisClusterException) as exc:
            row["error"] = str(exc)
            row["replicas"] = [self._replica(u, None) for u in (info.replicas if info else [])]
            unreachable = {(t.name, q): {"unreachable": True} for t, q in mine}
            return row, unreachable
        now_s, micros = replies[0] if isinstance(replies[0], tuple) else (time.time(), 0)
        now_ms = int(now_s) * 1000 + int(micros) // 1000
        memory, stats, replication = (r if isinstance(r, dict) else {} for r in replies[1:4])
        row.update(
            up=True,
            role=replication.get("role"),
            memory=memory.get("used_memory_human"),
            ops=stats.get("instantaneous_ops_per_sec"),
        )
        offset = int(replication.get("master_repl_offset") or 0)
        replica_urls = info.replicas if info is not None else []
        if "cluster" in row:  # every master's replicas, as the cluster reports them
            row["replicas"] = [
                {"url": r, "up": True, "link": "up", "lag": None}
                for m in row["cluster"]
                for r in m["replicas"]
            ]
        elif replica_urls:
            row["replicas"] = [self._replica(u, offset) for u in replica_urls]
        else:  # not registered: the replicas the master reports
            row["replicas"] = [
                {
                    "url": f"{r.get('ip')}:{r.get('port')}",
                    "up": r.get("state") == "online",
                    "lag": max(0, offset - int(r.get("offset") or 0)),
                }
                for k, r in sorted(replication.items())
                if k.startswith("slave") and isinstance(r, dict)
            ]
        at = 4
        queues: dict[tuple[str, int], dict[str, Any]] = {}
        dead: list[dict[str, Any]] = []
        for t, q in mine:
            gs = groups[t.name]
            n = QUEUE_COMMANDS + GROUP_COMMANDS * len(gs)
            counts = parse_queue(replies[at : at + n], gs)
            with contextlib.suppress(redis.RedisError, OSError):  # rare: lag nil
                count_unknown_lag(conn, client.router.queue_keys(t.name, q), counts)
            queues[(t.name, q)] = _queue_row(counts, now_ms)
            at += n
            for g in gs:
                entries = replies[at]
                at += 1
                if isinstance(entries, list):
                    dead.extend(_dead_letter(t.name, g, q, e, f) for e, f in entries)
        row["_dead"] = dead
        return row, queues

    def _replica(self, url: str, master_offset: int | None) -> dict[str, Any]:
        """Up (answers), link (to its master) and lag (bytes of replication offset behind
        the master, when both are known) of one replica."""
        out: dict[str, Any] = {"url": mask_url(url), "up": False, "link": None, "lag": None}
        try:
            conn = self._replicas.get(url)
            if conn is None:
                conn = self._replicas[url] = connect(url, socket_timeout=REPLICA_TIMEOUT)
            info = conn.info("replication")
        except (redis.RedisError, OSError) as exc:
            out["error"] = str(exc)
            return out
        out["up"] = True
        out["link"] = info.get("master_link_status")
        if out["link"] == "up" and master_offset is not None:
            out["lag"] = max(0, master_offset - int(info.get("slave_repl_offset") or 0))
        return out

    def close(self) -> None:
        for conn in self._replicas.values():
            with contextlib.suppress(Exception):
                conn.close()
        self._replicas.clear()


def size(n: int | None) -> str:
    """Bytes: 0 B, 512 B, 1.2 KB, 3.4 MB."""
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KB", "MB"):
        if value < 1024 or unit == "MB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GB"  # pragma: no cover


def cluster_head(conn: Any) -> list[Any]:
    """TIME and INFO memory, stats and replication of a Redis Cluster broker, summed over
    its masters, in the order the dashboard's broker pipeline has them."""
    primaries = conn.get_primaries()
    memory = conn.info("memory", target_nodes=primaries)
    stats = conn.info("stats", target_nodes=primaries)
    used = sum(int(m.get("used_memory", 0)) for m in memory.values())
    ops = sum(int(s.get("instantaneous_ops_per_sec", 0)) for s in stats.values())
    return [
        conn.time(),
        {"used_memory_human": size(used)},
        {"instantaneous_ops_per_sec": ops},
        {"role": f"cluster of {len(primaries)}"},
    ]


def gather(client: Client, previous: dict[str, Any] | None = None) -> dict[str, Any]:
    """One read of everything the dashboard shows (see `Gatherer.gather`)."""
    g = Gatherer(client)
    try:
        return g.gather(previous)
    finally:
        g.close()


def _queue_row(counts: QueueCounts, now_ms: int) -> dict[str, Any]:
    """One queue's counts as the dashboard's plain data (ages in seconds)."""
    out: dict[str, Any] = {
        "length": counts.length,
        "added": counts.added,
        "delayed": counts.delayed,
        "deduplicated": counts.deduplicated,
        "dropped": counts.dropped,
        "groups": {},
    }
    for g, c in counts.groups.items():
        out["groups"][g] = {
            "pending": c.pending,
            "lag": c.lag,
            "oldest": max(0.0, (now_ms - c.oldest_ms) / 1000) if c.oldest_ms else None,
            "retrying": c.retrying,
            "retried": c.retried,
            "dead": c.dead,
            "done": c.done,
            "duplicates": c.duplicates,
            "finished": c.finished,
            "consumers": c.consumers,
        }
    return out


def _sum_topic(topic: Any, groups: list[str], queues: dict[tuple[str, int], dict]) -> dict:
    """A topic's counts summed over the queues that answered."""
    out: dict[str, Any] = {
        "name": topic.name,
        "queues": topic.queues,
        "unreachable": 0,
        "length": 0,
        "added": 0,
        "delayed": 0,
        "deduplicated": 0,
        "dropped": 0,
        "groups": [],
    }
    per_group: dict[str, dict[str, Any]] = {g: {"name": g, "oldest": None} for g in groups}
    for q in range(topic.queues):
        row = queues.get((topic.name, q), {"unreachable": True})
        if row.get("unreachable"):
            out["unreachable"] += 1
            continue
        for f in ("length", "added", "delayed", "deduplicated", "dropped"):
            out[f] += row[f]
        for g, counts in row["groups"].items():
            acc = per_group[g]
            for f, v in counts.items():
                if f == "oldest":
                    if v is not None:
                        acc["oldest"] = v if acc["oldest"] is None else max(acc["oldest"], v)
                elif f == "consumers":
                    acc[f] = max(acc.get(f, 0), v)
                else:
                    acc[f] = acc.get(f, 0) + v
    for g in groups:
        acc = per_group[g]
        for f in ("pending", "lag", "retrying", "retried", "dead", "done", "duplicates"):
            acc.setdefault(f, 0)
        acc.setdefault("finished", 0)
        acc.setdefault("consumers", 0)
        out["groups"].append(acc)
    out["backlog"] = topic_backlog(
        out["length"],
        out["delayed"],
        (GroupCounts(g["pending"], g["lag"], g["retrying"]) for g in out["groups"]),
    )
    out["max_backlog"] = getattr(topic, "max_backlog", 0)
    return out


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value or "")


def _dead_letter(topic: str, group: str, queue: int, entry: bytes, f: dict) -> dict[str, Any]:
    import json

    task = ""
    try:
        body = json.loads(f.get(b"body") or b"null")
        if isinstance(body, dict) and isinstance(body.get("task"), str):
            task = body["task"]
    except ValueError:
        pass
    return {
        "topic": topic,
        "group": group,
        "queue": queue,
        "id": _text(f.get(b"id")) or _text(entry),
        "task": task,
        "error": _text(f.get(b"dead_reason")),
        "attempts": int(f.get(b"dead_attempts") or 0),
        "failed_at": int(f.get(b"dead_at") or 0),
    }


# --- rates (pure) -------------------------------------------------------------------------
def rates(previous: dict[str, Any] | None, data: dict[str, Any]) -> dict[str, Any]:
    """Per topic: messages in (appended) and out (finished by its groups: done or dead) per
    second since `previous`, with the history of both for the sparklines; per group: out.

    A topic with a queue that did not answer now or then gets no new sample.
    """
    before = {t["name"]: t for t in (previous or {}).get("topics", [])}
    old = (previous or {}).get("rates", {})
    dt = data["time"] - previous["time"] if previous else 0.0
    out: dict[str, Any] = {}
    for t in data["topics"]:
        p = before.get(t["name"])
        past = old.get(t["name"], {})
        r: dict[str, Any] = {
            "in": None,
            "out": None,
            "in_history": list(past.get("in_history", [])),
            "out_history": list(past.get("out_history", [])),
            "groups": {},
        }
        if p is not None and dt > 0 and not t["unreachable"] and not p.get("unreachable"):
            r["in"] = max(0.0, (t["added"] - p["added"]) / dt)
            then = {g["name"]: g for g in p["groups"]}
            total = 0.0
            for g in t["groups"]:
                pg = then.get(g["name"])
                gr = max(0.0, (g["finished"] - pg["finished"]) / dt) if pg else 0.0
                r["groups"][g["name"]] = gr
                total += gr
            r["out"] = total
            r["in_history"] = (r["in_history"] + [r["in"]])[-HISTORY:]
            r["out_history"] = (r["out_history"] + [r["out"]])[-HISTORY:]
        out[t["name"]] = r
    return out
