"""`redismq dashboard`: a live, read-only view of brokers, topics, groups, workers and the
latest dead letters.

Three parts, each testable on its own:

- `Gatherer.gather()` reads everything with read-only commands (INFO, TIME, XINFO, XLEN,
  XPENDING, XREVRANGE, ZCARD, HGETALL, HVALS...), one pipeline per broker. A broker that
  does not answer is reported as down (its queues as unreachable); it never raises for that.
- `render(data, previous, width)` turns gathered data into a rich renderable: a pure
  function, so that tests render it on a recorded console without a terminal.
- `run_dashboard()` refreshes a full-terminal `Live` view every interval until `q` (read
  from the terminal in cbreak mode by a thread) or Ctrl-C.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from typing import IO, Any

import redis
from redis.exceptions import RedisClusterException
from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

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
SPARK = "▁▂▃▄▅▆▇█"
REPLICA_TIMEOUT = 1.0
MAX_WORKERS = 12  # worker rows shown live (the rest are counted)
WIDE = 120  # from this width, tables get their extra columns
SIDE_BY_SIDE = 170  # from this width, two columns of tables


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


# --- rendering (pure) ---------------------------------------------------------------------
def sparkline(values: list[float], width: int) -> str:
    """The last `width` values as block characters scaled to their maximum."""
    values = values[-width:]
    if not values:
        return ""
    top = max(values)
    if top <= 0:
        return SPARK[0] * len(values)
    return "".join(
        SPARK[min(len(SPARK) - 1, int(v / top * (len(SPARK) - 1) + 0.5))] for v in values
    )


def count(n: Any) -> str:
    """A count, exact up to 99,999, then 123k / 1.2M."""
    if n is None:
        return "-"
    n = int(n)
    if abs(n) < 100_000:
        return str(n)
    if abs(n) < 10_000_000:
        return f"{n / 1000:.0f}k"
    return f"{n / 1_000_000:.1f}M"


def per_second(r: float | None) -> str:
    if r is None:
        return "-"
    return f"{r:.0f}" if r >= 10 or r == 0 else f"{r:.1f}"


def age(seconds: float | None) -> str:
    """3s, 2m05s, 1h02m, 3d04h."""
    if seconds is None:
        return "-"
    s = int(max(0.0, seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


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


def cell(value: Any, style: str = "") -> Text:
    """Text for a text column: one line, cut with an ellipsis when the column is narrow."""
    return Text(str(value), style=style, no_wrap=True, overflow="ellipsis")


def _table(
    title: str,
    *columns: str,
    wide: bool,
    limits: dict[str, int] | None = None,
    stretch: str | None = None,
) -> Table:
    """A table of the dashboard: columns named ">x" hold numbers (right-aligned, never cut);
    the others are cut to `limits[name]` (else 24 columns when not wide). The `stretch`
    column takes whatever width the others leave."""
    table = Table(
        title=title,
        title_justify="left",
        title_style="bold",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        padding=(0, 1),
        expand=stretch is not None,
    )
    for c in columns:
        numeric = c.startswith(">")
        name = c.lstrip(">")
        # numbers are never cut: the text columns (names, errors) give way; their cells
        # are `cell()`s, cut with an ellipsis rather than wrapped
        table.add_column(
            name,
            justify="right" if numeric else "left",
            no_wrap=numeric,
            overflow="ellipsis",
            min_width=len(name) if numeric else None,
            max_width=(limits or {}).get(name, None if wide or numeric else 24),
            ratio=1 if name == stretch else None,
        )
    return table


def brokers_table(data: dict[str, Any], wide: bool) -> Table:
    cols = ["broker", "up", "role", "replicas", ">lag", ">memory", ">ops/s"]
    if wide:
        cols += ["state", "url"]
    table = _table("Brokers", *cols, wide=wide)
    for b in data["brokers"]:
        reps = b.get("replicas", [])
        up_reps = [r for r in reps if r.get("up")]
        lags = [r["lag"] for r in up_reps if r.get("lag") is not None]
        replicas: str | Text = "-"
        if reps:
            down = len(reps) - len(up_reps)
            replicas = cell(f"{len(up_reps)}/{len(reps)} up", style="red" if down else "")
        row: list[Any] = [
            cell(b["name"]),
            cell("up", style="green") if b["up"] else cell("DOWN", style="bold red"),
            b.get("role") or "-",
            replicas,
            size(max(lags)) if lags else "-",
            b.get("memory") or "-",
            count(b.get("ops")),
        ]
        if wide:
            state = b.get("state", "active")
            row += [
                cell(state, style="" if state == "active" else "yellow"),
                cell(b.get("address") or b["url"]),
            ]
        table.add_row(*row)
        for m in b.get("cluster") or []:  # a Redis Cluster broker: one line per master
            sub: list[Any] = [
                cell(f" └ {m['node']}"),
                cell("up", style="green"),
                f"master, {len(m['queues'])} queues",
                str(len(m["replicas"])),
                "-",
                "-",
                "-",
            ]
            table.add_row(*sub, *(["", ""] if wide else []))
    return table


def topics_table(data: dict[str, Any], wide: bool) -> Table:
    cols = ["topic", ">queues", ">length", ">delayed", ">backlog", ">in/s", ">out/s", "trend in"]
    spark = 12 if wide else 8
    if wide:
        cols += ["trend out", ">deduped", ">dropped"]
    table = _table("Topics", *cols, wide=wide)
    for t in data["topics"]:
        r = data.get("rates", {}).get(t["name"], {})
        queues: str | Text = str(t["queues"])
        if t.get("unreachable"):
            queues = cell(f"{t['queues']} ({t['unreachable']} down)", style="red")
        name = cell(t["name"], style="yellow" if t.get("no_group") else "")
        row: list[Any] = [
            name,
            queues,
            count(t["length"]),
            count(t["delayed"]),
            backlog(t),
            per_second(r.get("in")),
            per_second(r.get("out")),
            cell(sparkline(r.get("in_history", []), spark), style="cyan"),
        ]
        if wide:
            row += [
                cell(sparkline(r.get("out_history", []), spark), style="magenta"),
                count(t.get("deduplicated")),
                count(t.get("dropped")),
            ]
        table.add_row(*row)
    return table


def backlog(t: dict[str, Any]) -> Any:
    """The backlog, against the topic's bound if it has one (red when near it)."""
    n = t.get("backlog")
    bound = t.get("max_backlog") or 0
    if not bound:
        return count(n)
    return cell(f"{count(n)}/{count(bound)}", style="red" if (n or 0) >= 0.9 * bound else "")


def groups_table(data: dict[str, Any], wide: bool) -> Table:
    head = ["topic", "group"] if wide else ["topic/group"]
    cols = [*head, ">pending", ">lag", ">oldest", ">retry", ">dead", ">done", ">dupes", ">cons"]
    if not wide:
        cols[1:] = [">pend", ">lag", ">oldest", ">retry", ">dead", ">done", ">dupes", ">cons"]
    if wide:
        cols += [">retried", ">out/s"]
    table = _table("Groups", *cols, wide=wide)
    for t in data["topics"]:
        r = data.get("rates", {}).get(t["name"], {})
        for g in t["groups"]:
            names = (
                [cell(t["name"]), cell(g["name"])] if wide else [cell(f"{t['name']}/{g['name']}")]
            )
            if g.get("live") is False:
                names[-1].stylize("yellow")
            row: list[Any] = [
                *names,
                count(g["pending"]),
                count(g["lag"]),
                age(g.get("oldest")),
                count(g["retrying"]),
                cell(count(g["dead"]), style="red" if g["dead"] else ""),
                count(g["done"]),
                count(g["duplicates"]),
                str(g["consumers"]),
            ]
            if wide:
                row += [count(g.get("retried")), per_second(r.get("groups", {}).get(g["name"]))]
            table.add_row(*row)
    return table


def workers_table(data: dict[str, Any], wide: bool, limit: int | None = None) -> Table:
    cols = ["worker", ">conc", ">in flight", ">processed", ">failed", ">beat"]
    if wide:
        cols = ["worker", "host", ">pid", "groups", *cols[1:]]
    workers = data["workers"]
    shown = workers if limit is None else workers[:limit]
    table = _table(f"Workers ({len(workers)} live)", *cols, wide=wide)
    for w in shown:
        row: list[Any] = [cell(str(w.get("id", "?")))]
        if wide:
            row += [
                cell(str(w.get("host", ""))),
                str(w.get("pid", "")),
                cell(",".join(w.get("groups", []))),
            ]
        row += [
            str(w.get("concurrency", "-")),
            count(w.get("in_flight", 0)),
            count(w.get("processed", 0)),
            cell(count(w.get("failed", 0)), style="red" if w.get("failed") else ""),
            age(data["time"] - float(w.get("last_beat", data["time"]))),
        ]
        table.add_row(*row)
    if len(shown) < len(workers):
        table.caption = f"... and {len(workers) - len(shown)} more"
    return table


def dead_letters_table(data: dict[str, Any], wide: bool, width: int = 80) -> Table:
    """The latest dead letters; the error takes the width the other columns leave (full
    message ids from 160 columns, else their last 10 characters)."""
    full_ids = width >= 160
    cols = ["topic/group", "id", "task", ">tries", "error"]
    if wide:
        cols += [">age"]
    limits = {"topic/group": 24 if wide else 16, "id": 32 if full_ids else 11}
    limits["task"] = 32 if full_ids else 24 if wide else 16
    table = _table("Latest dead letters", *cols, wide=wide, limits=limits, stretch="error")
    for d in data["dead_letters"]:
        task = d["task"] if wide else d["task"].rpartition(".")[2]
        row: list[Any] = [
            cell(f"{d['topic']}/{d['group']}"),
            cell(d["id"] if full_ids else f"…{d['id'][-10:]}"),
            cell(task or "-"),
            str(d["attempts"]),
            cell(d["error"], style="red"),
        ]
        if wide:
            row.append(age(data["time"] - d["failed_at"] / 1000) if d["failed_at"] else "-")
        table.add_row(*row)
    if not data["dead_letters"]:
        table.caption = "none"
    return table


def header(data: dict[str, Any], interval: float | None) -> Text:
    when = datetime.fromtimestamp(data["time"]).strftime("%H:%M:%S")
    text = Text.assemble(
        ("redismq", "bold"),
        f"  meta {data['meta']}  ns {data['namespace']}  {when}",
    )
    if interval is not None:
        text.append(f"  every {interval:g}s  ")
        text.append("q", style="bold")
        text.append(" quits")
    for e in data.get("errors", []):
        text.append("\n")
        text.append(f"unreachable: {e}", style="bold red")
    for b in data["brokers"]:
        if not b["up"] and b.get("error"):
            text.append("\n")
            text.append(f"broker {b['name']} is down: {b['error']}", style="red")
    for t in data["topics"]:
        if t.get("no_group"):
            text.append("\n")
            text.append(f"topic {t['name']} has no group: nothing consumes it", style="yellow")
        for g in t["groups"]:
            if g.get("live") is False:
                text.append("\n")
                text.append(f"group {t['name']}/{g['name']} has no live consumer", style="yellow")
    return text


def render(
    data: dict[str, Any],
    previous: dict[str, Any] | None = None,
    width: int = 80,
    *,
    interval: float | None = None,
    max_workers: int | None = None,
) -> RenderableType:
    """The dashboard for `width` columns: one column of tables below SIDE_BY_SIDE columns
    (with extra columns from WIDE), two columns of narrower tables above.

    `previous` is only needed when `data` carries no rates (computed here then).
    """
    if "rates" not in data:
        data = {**data, "rates": rates(previous, data)}
    top = header(data, interval)
    gap = Text("")
    if width >= SIDE_BY_SIDE:
        half = (width - 2) // 2
        left = Group(brokers_table(data, False), gap, topics_table(data, False))
        right = Group(
            workers_table(data, False, max_workers), gap, dead_letters_table(data, False, half)
        )
        grid = Table.grid(padding=(0, 2))
        grid.add_column(width=half)
        grid.add_column(width=width - half - 2)
        grid.add_row(left, right)
        return Group(top, gap, grid, gap, groups_table(data, True), *outboxes(data, True))
    wide = width >= WIDE
    return Group(
        top,
        gap,
        brokers_table(data, wide),
        gap,
        topics_table(data, wide),
        gap,
        groups_table(data, wide),
        gap,
        workers_table(data, wide, max_workers),
        gap,
        dead_letters_table(data, wide, width),
        *outboxes(data, wide),
    )


def outboxes(data: dict[str, Any], wide: bool) -> list[RenderableType]:
    """The outboxes' table (cli.outbox), when a relay reports one."""
    from cli.outbox import outboxes_table

    return [Text(""), outboxes_table(data, wide)] if data.get("outboxes") else []


# --- running ------------------------------------------------------------------------------
class KeyReader:
    """Reads single keys from a terminal without blocking the caller: a thread reads stdin
    in cbreak mode (Ctrl-C still interrupts) and sets `quit` on `q`. Does nothing when the
    stream is not a terminal."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self.stream = stream if stream is not None else sys.stdin
        self.quit = threading.Event()
        self._stop = threading.Event()
        self._saved: Any = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> KeyReader:
        try:
            fd = self.stream.fileno()
            tty_in = os.isatty(fd)
        except (AttributeError, OSError, ValueError):
            return self
        if not tty_in:
            return self
        import termios
        import tty

        self._saved = termios.tcgetattr(fd)
        tty.setcbreak(fd)
        self._thread = threading.Thread(target=self._read, args=(fd,), daemon=True)
        self._thread.start()
        return self

    def _read(self, fd: int) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([fd], [], [], 0.1)
            if not ready:
                continue
            key = os.read(fd, 1)
            if key in (b"q", b"Q") or not key:
                self.quit.set()
                return

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(1.0)
        if self._saved is not None:
            import termios

            with contextlib.suppress(Exception):
                termios.tcsetattr(self.stream.fileno(), termios.TCSADRAIN, self._saved)


def frames(
    client: Client, interval: float, stop: threading.Event
) -> Iterator[tuple[dict[str, Any], dict[str, Any] | None]]:
    """(data, previous) every interval until `stop` is set."""
    gatherer = Gatherer(client)
    previous: dict[str, Any] | None = None
    try:
        while not stop.is_set():
            started = time.monotonic()
            data = gatherer.gather(previous)
            yield data, previous
            previous = data
            stop.wait(max(0.0, interval - (time.monotonic() - started)))
    finally:
        gatherer.close()


@contextlib.contextmanager
def _quit_on_sigint(quit_event: threading.Event) -> Iterator[None]:
    """Ctrl-C ends the dashboard like `q` (at the next refresh, whatever it was doing),
    instead of an exception raised wherever the main thread happens to be."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, lambda signum, frame: quit_event.set())
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def run_dashboard(client: Client, interval: float = 1.0, console: Console | None = None) -> None:
    """Show the live dashboard until `q` or Ctrl-C: full-screen on a terminal (elsewhere the
    last refresh is printed when it stops)."""
    console = console or Console()
    try:
        with KeyReader() as reader, _quit_on_sigint(reader.quit):
            live = Live(
                Text("reading..."),
                console=console,
                screen=console.is_terminal,
                auto_refresh=False,
                vertical_overflow="crop",
            )
            with live:
                for data, previous in frames(client, interval, reader.quit):
                    shown = render(
                        data, previous, console.width, interval=interval, max_workers=MAX_WORKERS
                    )
                    live.update(shown, refresh=True)
    except KeyboardInterrupt:
        pass
