"""What `redismq dashboard` shows, drawn: `render(data, previous, width)` turns gathered
data (cli.dashboard_data) into a rich renderable. Pure functions, so that tests render them
on a recorded console without a terminal.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from redismq.cli.dashboard_data import rates, size

SPARK = "▁▂▃▄▅▆▇█"
WIDE = 120  # from this width, tables get their extra columns
SIDE_BY_SIDE = 170  # from this width, two columns of tables


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


def cell(value: Any, style: str = "") -> Text:
    """Text for a text column: one line, cut with an ellipsis when the column is narrow."""
    return Text(str(value), style=style, no_wrap=True, overflow="ellipsis")


def new_table(
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
    table = new_table("Brokers", *cols, wide=wide)
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
    table = new_table("Topics", *cols, wide=wide)
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
    table = new_table("Groups", *cols, wide=wide)
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
    table = new_table(f"Workers ({len(workers)} live)", *cols, wide=wide)
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


def dead_letters_table(
    data: dict[str, Any], wide: bool, width: int = 80, full_ids: bool = False
) -> Table:
    """The latest dead letters; the error takes the width the other columns leave (full
    message ids from 160 columns or when asked, else their last 10 characters)."""
    full_ids = full_ids or width >= 160
    cols = ["topic/group", "id", "task", ">tries", "error"]
    if wide:
        cols += [">age"]
    limits = {"topic/group": 24 if wide else 16, "id": 32 if full_ids else 11}
    limits["task"] = 32 if full_ids else 24 if wide else 16
    table = new_table("Latest dead letters", *cols, wide=wide, limits=limits, stretch="error")
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
    full_ids: bool = False,
) -> RenderableType:
    """The dashboard for `width` columns: one column of tables below SIDE_BY_SIDE columns
    (with extra columns from WIDE), two columns of narrower tables above. Dead letters'
    ids are cut below 160 columns unless `full_ids` (printed once: to paste).

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
            workers_table(data, False, max_workers),
            gap,
            dead_letters_table(data, False, half, full_ids),
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
        dead_letters_table(data, wide, width, full_ids),
        *outboxes(data, wide),
    )


def outboxes(data: dict[str, Any], wide: bool) -> list[RenderableType]:
    """The outboxes' table, when a relay reports one."""
    return [Text(""), outboxes_table(data, wide)] if data.get("outboxes") else []


def outboxes_table(data: dict[str, Any], wide: bool) -> Table:
    """The dashboard's table of outboxes: rows waiting, the oldest's age, the last report."""
    cols = ["outbox", ">waiting", ">oldest", ">reported", "error"]
    width = 48 if wide else 28
    table = new_table("Outboxes", *cols, wide=wide, limits={"outbox": width})
    for o in data.get("outboxes", []):
        stale = o["reported_ago"] > 30
        name = o["name"]  # its end (database and table) says most: cut at the start
        table.add_row(
            cell(name if len(name) <= width else f"…{name[1 - width :]}"),
            count(o["waiting"]),
            cell(age(o["oldest_age"]), style="red" if o["oldest_age"] > 60 else ""),
            cell(f"{age(o['reported_ago'])} ago", style="red" if stale else ""),
            cell(o.get("error") or "", style="red"),
        )
    return table
