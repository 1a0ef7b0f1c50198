"""The dashboard: what it gathers (exact, read-only, a broker down is no crash), how it
renders (every section, 80 columns, wide terminals, rates and sparklines), `status` printing
the same tables, and the live command quitting on `q` and on Ctrl-C in a real terminal."""

from __future__ import annotations

import fcntl
import io
import json
import os
import pty
import select
import signal
import struct
import subprocess
import sys
import termios
import time

import pytest
from click.testing import CliRunner
from conftest import ROOT, denied, setinfo_rule
from rich.console import Console

from redismq import Client
from redismq.brokers import add_broker
from redismq.cli.dashboard_data import gather
from redismq.cli.dashboard_view import render, sparkline
from redismq.cli.main import main
from redismq.server import LocalServer
from redismq.status import snapshot

SECTIONS = ("Brokers", "Topics", "Groups", "Workers", "Latest dead letters")


def text_of(renderable, width: int) -> str:
    console = Console(width=width, record=True, file=io.StringIO(), color_system=None)
    console.print(renderable)
    return console.export_text()


def fill(client: Client) -> None:
    """Two topics with messages done, pending, retrying, dead, delayed and deduplicated, a
    group that read nothing, and one live worker's heartbeat record."""
    client.create_topic("emails", queues=2)
    client.create_topic("audit-log", queues=1)
    for i in range(10):
        client.send("emails", {"task": "app.tasks.send_email", "args": [i], "kwargs": {}})
    client.send("emails", {"later": True}, delay=3600)
    client.send("emails", {"n": 1}, dedup_key="once")
    client.send("emails", {"n": 1}, dedup_key="once")
    mailer = client.consumer("emails", "mailer", visibility_timeout=60)
    got = sorted(mailer.receive(count=100, block=0.5), key=lambda m: "task" not in m.body)
    mailer.dead_letter(got[0], "SMTPRecipientsRefused: mailbox unavailable")
    mailer.retry(got[1], "boom", delay=3600)
    mailer.ack_many(got[2:6])  # 5 stay pending
    client.consumer("emails", "analytics")
    client.send("audit-log", {"who": "me"})
    beat = {
        "id": "web-1:4242",
        "host": "web-1",
        "pid": 4242,
        "topics": ["emails"],
        "groups": ["mailer"],
        "concurrency": 8,
        "processed": 123,
        "failed": 2,
        "in_flight": 3,
        "in_flight_ids": [],
        "last_beat": time.time(),
    }
    client.meta.hset(client.router.keys.workers, beat["id"], json.dumps(beat))


# -- gathering --------------------------------------------------------------------------
def test_gathered_counts_are_those_of_status(client):
    fill(client)

    data = gather(client)
    snap = snapshot(client)

    assert data["errors"] == []
    fields = ("pending", "lag", "retrying", "retried", "dead", "done", "duplicates", "consumers")
    for mine, theirs in zip(data["topics"], snap["topics"], strict=True):
        assert (mine["name"], mine["length"], mine["delayed"], mine["backlog"]) == (
            theirs["name"],
            theirs["length"],
            theirs["delayed"],
            theirs["backlog"],
        )
        for g, h in zip(mine["groups"], theirs["groups"], strict=True):
            assert {f: g[f] for f in fields} == {f: h[f] for f in fields}
    emails = next(t for t in data["topics"] if t["name"] == "emails")
    assert emails["deduplicated"] == 1 and emails["added"] == 11
    mailer = next(g for g in emails["groups"] if g["name"] == "mailer")
    assert mailer["pending"] == 5 and mailer["oldest"] is not None and mailer["oldest"] >= 0
    [dead] = data["dead_letters"]
    assert (dead["topic"], dead["group"], dead["task"], dead["attempts"]) == (
        "emails",
        "mailer",
        "app.tasks.send_email",
        1,
    )
    assert "mailbox unavailable" in dead["error"]
    [broker] = data["brokers"]
    assert broker["up"] and broker["role"] == "master" and broker["memory"]
    assert [w["id"] for w in data["workers"]] == ["web-1:4242"]


def test_gathering_never_writes_to_redis(server, client, url):
    """Run by a user that may only read: every command it sends must be allowed."""
    fill(client)
    admin = server.client()
    rules = ["on", ">pw", "~*", "-@all", "+@read", "+info", "+time", "+ping"]
    admin.execute_command("ACL", "SETUSER", "viewer", *rules, *setinfo_rule(admin))
    admin.execute_command("ACL", "LOG", "RESET")
    try:
        viewer = Client(url.replace("redis://", "redis://viewer:pw@"))
        data = gather(viewer)
        data = gather(viewer, data)
        assert denied(admin) == []
        assert data["errors"] == []
        assert data["dead_letters"] and data["workers"]
        with pytest.raises(Exception, match="permissions"):
            viewer.meta.set("x", 1)  # the check checks
    finally:
        admin.execute_command("ACL", "DELUSER", "viewer")
        admin.close()


def test_a_broker_or_replica_that_goes_down_shows_as_down(tmp_path):
    with (
        LocalServer() as meta,
        LocalServer() as b1,
        LocalServer(replica_of=b1) as b1_replica,
        LocalServer() as b2,
    ):
        client = Client(meta.url)
        add_broker(client, "b1", b1.url, [b1_replica.url])
        client.create_topic("emails", queues=2)  # both queues on b1, the only broker yet
        add_broker(client, "b2", b2.url)
        client.create_topic("other", queues=4)
        client.send("emails", {"n": 1})
        data = gather(client)
        [up1, up2] = data["brokers"]
        assert (up1["name"], up1["up"], up2["up"]) == ("b1", True, True)
        assert [r["up"] for r in up1["replicas"]] == [True]

        b1_replica.kill()
        data = gather(client, data)
        assert [r["up"] for r in data["brokers"][0]["replicas"]] == [False]
        assert "0/1 up" in text_of(render(data, width=80), 80)

        b1.kill()
        data = gather(client, data)
        down, up = data["brokers"]
        assert (down["name"], down["up"], up["up"]) == ("b1", False, True)
        emails = next(t for t in data["topics"] if t["name"] == "emails")
        assert emails["unreachable"] == 2
        shown = text_of(render(data, width=80), 80)
        assert "DOWN" in shown and "broker b1 is down" in shown

        meta.kill()
        data = gather(client, data)
        assert data["errors"] and "meta Redis" in data["errors"][0]
        assert "unreachable" in text_of(render(data, width=80), 80)


# -- rendering --------------------------------------------------------------------------
def test_render_at_80_columns_has_every_section_and_fits(client):
    fill(client)

    shown = text_of(render(gather(client), width=80), 80)

    for section in SECTIONS:
        assert section in shown
    assert max(len(line) for line in shown.splitlines()) <= 80
    for word in ("emails/mailer", "audit-log", "web-1:4242", "123", "SMTPRecipientsRe", "master"):
        assert word in shown, word


def test_render_uses_the_width_of_a_wide_terminal(client):
    fill(client)
    data = gather(client)

    narrow, wide, widest = (text_of(render(data, width=w), w) for w in (80, 140, 220))

    assert "retried" not in narrow and "retried" in wide and "retried" in widest
    assert "app.tasks.send_email" in wide  # full task names when there is room
    assert max(len(line) for line in wide.splitlines()) > 100
    # side by side: brokers and workers share lines
    assert any("Brokers" in line and "Workers" in line for line in widest.splitlines())
    for section in SECTIONS:
        assert section in widest


def sample(at: float, added: int, finished: int) -> dict:
    group = {
        "name": "mailer",
        "pending": 2,
        "lag": 0,
        "oldest": 75.0,
        "retrying": 0,
        "retried": 0,
        "dead": 0,
        "done": finished,
        "duplicates": 0,
        "finished": finished,
        "consumers": 4,
    }
    topic = {
        "name": "emails",
        "queues": 4,
        "unreachable": 0,
        "length": added,
        "added": added,
        "delayed": 0,
        "deduplicated": 0,
        "dropped": 0,
        "groups": [group],
    }
    return {
        "time": at,
        "meta": "redis://127.0.0.1:6379/0",
        "namespace": "rmq",
        "brokers": [],
        "topics": [topic],
        "workers": [],
        "dead_letters": [],
        "errors": [],
    }


def test_rates_come_from_successive_snapshots_with_a_sparkline():
    first = sample(100.0, added=1000, finished=900)
    second = sample(102.0, added=1100, finished=1000)  # +100 in, +100 out in 2 s

    shown = text_of(render(second, first, width=80), 80)

    [row] = [line for line in shown.splitlines() if line.strip().startswith("emails ")]
    assert row.split()[5:7] == ["50", "50"]  # in/s, out/s
    assert "1m15s" in shown  # the oldest pending message's age
    assert sparkline([0, 1, 2, 4, 8], 10) == "▁▂▃▅█"
    assert sparkline([0, 0], 10) == "▁▁"
    assert text_of(render(first, None, width=80), 80).count(" - ") >= 2  # no rate yet


# -- commands ---------------------------------------------------------------------------
def test_status_prints_the_dashboard_tables_once(client, url, processes):
    fill(client)

    result = CliRunner().invoke(main, ["status", "--url", url], catch_exceptions=False)

    assert result.exit_code == 0, result.output
    for section in SECTIONS:
        assert section in result.output
    [dead] = client.dead_letters("emails", "mailer")
    for columns in ("80", "200"):  # one table below the other; side by side
        proc = processes.start("status", "--url", url, env={"COLUMNS": columns})
        output, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, output
        assert max(len(line) for line in output.splitlines()) <= int(columns)
        assert dead.id in output, output  # ids in full, to paste into `dlq show`


def controlling_terminal() -> None:
    """In the child: a new session whose controlling terminal is its stdin (so that Ctrl-C
    typed there is a SIGINT), as a shell would set it up."""
    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def run_in_terminal(args: list[str], columns: int = 100, lines: int = 40):
    """Start the command with a pseudo-terminal as stdin, stdout and stderr."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", lines, columns, 0, 0))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TERM": "xterm-256color"}
    env.pop("COLUMNS", None)
    env.pop("LINES", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "redismq.cli.main", *args],
        cwd=ROOT,
        env=env,
        stdin=slave,
        stdout=slave,
        stderr=slave,
        preexec_fn=controlling_terminal,
    )
    os.close(slave)
    return proc, master


def read_until(master: int, proc, predicate, timeout: float = 30.0) -> bytes:
    """What the terminal showed until `predicate(shown)` or the process exited."""
    shown = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not predicate(shown):
        ready, _, _ = select.select([master], [], [], 0.1)
        if ready:
            try:
                shown += os.read(master, 65536)
            except OSError:  # the process closed the terminal
                break
        elif proc.poll() is not None:
            break
    return shown


@pytest.mark.parametrize("how", ["q", "ctrl-c"])
def test_dashboard_command_runs_live_and_quits(how, client, url):
    fill(client)
    proc, master = run_in_terminal(["dashboard", "--url", url, "--interval", "0.2"])
    try:
        shown = read_until(master, proc, lambda s: s.count(b"Latest dead letters") >= 2)
        assert b"Latest dead letters" in shown and b"web-1:4242" in shown, shown[-2000:]
        if how == "q":
            os.write(master, b"q")
        else:
            os.write(master, b"\x03")  # the terminal turns it into SIGINT
        shown += read_until(master, proc, lambda s: proc.poll() is not None, timeout=15)
        assert proc.wait(15) == 0, shown[-2000:]
        assert b"Traceback" not in shown
        assert b"\x1b[?1049l" in shown  # left the alternate screen: the terminal is restored
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        os.close(master)
