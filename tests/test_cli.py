"""The `redismq` command: `status --json` (shape, exact counts, masked passwords), `send`,
and bad input — one clear error, exit 1 (runtime) or 2 (usage), never a traceback."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys

import pytest
from click.testing import CliRunner
from conftest import wait_for

from redismq import Client
from redismq.cli.main import main
from redismq.server import LocalServer

BROKER_FIELDS = {"name", "url", "up", "role"}
TOPIC_FIELDS = {"name", "queues", "length", "delayed", "groups"}
GROUP_FIELDS = {"name", "pending", "lag", "retrying", "dead", "done", "duplicates", "consumers"}
WORKER_APP = "tests.apps.worker_app:app"


def invoke(*args: str) -> tuple[int, str]:
    """Run the command in this process; its exit code and everything it printed."""
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.output


def status_json(url: str) -> dict:
    code, output = invoke("status", "--json", "--url", url)
    assert code == 0, output
    return json.loads(output)


def free_port() -> int:
    """A loopback port nothing listens on (bound and released at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_cli(processes, *args: str) -> tuple[int, str]:
    """Run the command as a real process, output piped (not a terminal), 80 columns."""
    proc = processes.start(*args, env={"COLUMNS": "80"}, stdin=subprocess.DEVNULL)
    output, _ = proc.communicate(timeout=60)
    return proc.returncode, output


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.lower().startswith("error:")]


# -- status ----------------------------------------------------------------------------
def test_status_json_has_the_documented_shape_and_exact_counts(client, url):
    client.create_topic("emails", queues=2)
    for i in range(10):
        client.send("emails", {"n": i})
    for i in range(2):
        client.send("emails", {"later": i}, delay=3600)
    mailer = client.consumer("emails", "mailer", visibility_timeout=60)
    received = mailer.receive(count=100, block=0.5)
    assert len(received) == 10
    mailer.ack_many(received[:4])  # done 4
    mailer.retry(received[4], "boom", delay=3600)  # retrying 1
    mailer.dead_letter(received[5], "bad")  # dead 1; received[6:] stay pending (4)
    # The first message comes again (a resend after its dedup window): it is acknowledged
    # as a duplicate without running.
    stream = client.router.queue_keys("emails", received[0].queue).stream
    client.meta.xadd(stream, received[0].fields())
    assert mailer.receive(count=100, block=0.5) == []
    client.consumer("emails", "audit")  # a group whose one consumer has read nothing yet

    snap = status_json(url)

    assert set(snap) == {"brokers", "topics", "workers", "outboxes"}
    [broker] = snap["brokers"]
    assert set(broker) >= BROKER_FIELDS
    assert (broker["url"], broker["up"], broker["role"]) == (url, True, "master")
    [topic] = snap["topics"]
    assert set(topic) >= TOPIC_FIELDS
    assert (topic["name"], topic["queues"], topic["length"], topic["delayed"]) == (
        "emails",
        2,
        11,
        2,
    )
    groups = {g["name"]: g for g in topic["groups"]}
    assert set(groups) == {"mailer", "audit"}
    assert all(set(g) >= GROUP_FIELDS for g in groups.values())
    fields = sorted(GROUP_FIELDS - {"name"})
    assert {f: groups["mailer"][f] for f in fields} == {
        "pending": 4,
        "lag": 0,
        "retrying": 1,
        "dead": 1,
        "done": 4,
        "duplicates": 1,
        "consumers": 1,
    }
    assert {f: groups["audit"][f] for f in fields} == {
        "pending": 0,
        "lag": 11,
        "retrying": 0,
        "dead": 0,
        "done": 0,
        "duplicates": 0,
        "consumers": 1,
    }
    assert snap["workers"] == []


def test_status_lists_a_running_worker(url, processes, tmp_path):
    worker = processes.start(
        "worker",
        WORKER_APP,
        "--url",
        url,
        "--processes",
        "1",
        "--topic",
        "work",
        "--log-level",
        "WARNING",
        env={"REDISMQ_TEST_DB": str(tmp_path / "unused.db")},
    )
    assert wait_for(
        lambda: any(w.get("pid") == worker.pid for w in status_json(url)["workers"]), timeout=30
    )
    [record] = status_json(url)["workers"]
    assert "work" in record["topics"]


def test_status_masks_the_password_of_the_url():
    with LocalServer(password="s3cret") as server:
        assert "s3cret" in server.url
        Client(server.url).create_topic("emails", queues=1)

        snap = status_json(server.url)
        [broker] = snap["brokers"]
        assert broker["up"] is True
        assert "***" in broker["url"]
        assert "s3cret" not in json.dumps(snap)

        code, table = invoke("status", "--url", server.url)
        assert code == 0, table
        assert "s3cret" not in table

        code, output = invoke("status", "--url", server.url.replace("s3cret", "n0tthis"))
        assert code == 1
        assert "n0tthis" not in output and "s3cret" not in output
        assert "***" in output
        assert "Traceback" not in output


# -- send ------------------------------------------------------------------------------
def test_send_prints_the_id_of_the_stored_message(client, url):
    code, output = invoke("send", "emails", '{"to": "a@b.c"}', "--url", url)
    assert code == 2 and "--create" in output  # an unknown topic: a typo, unless asked
    code, output = invoke("send", "emails", '{"to": "a@b.c"}', "--create", "--url", url)
    assert code == 0, output
    message_id = output.strip()
    assert re.fullmatch(r"[0-9a-f]{32}", message_id), output

    code, output = invoke("send", "emails", "plain text", "--delay", "60", "--url", url)
    assert code == 0, output
    assert re.fullmatch(r"[0-9a-f]{32}", output.strip()), output

    [received] = client.consumer("emails", "g").receive(count=10, block=0.5)
    assert (received.id, received.body) == (message_id, {"to": "a@b.c"})
    assert status_json(url)["topics"][0]["delayed"] == 1


# -- bad input -------------------------------------------------------------------------
UNREACHABLE = "redis://127.0.0.1:{port}/0"

BAD_INPUTS = [
    pytest.param(1, ["status", "--url", "http://127.0.0.1:6379/0"], id="url-scheme"),
    pytest.param(1, ["status", "--url", "redis://127.0.0.1:notaport/0"], id="url-port"),
    pytest.param(1, ["status", "--url", UNREACHABLE], id="unreachable-status"),
    pytest.param(1, ["send", "emails", "x", "--url", UNREACHABLE], id="unreachable-send"),
    pytest.param(
        1, ["worker", WORKER_APP, "--processes", "1", "--url", UNREACHABLE], id="unreachable-worker"
    ),
    pytest.param(
        2, ["send", "emails", "x", "--delay", "-1", "--url", "{url}"], id="negative-delay"
    ),
    pytest.param(2, ["worker", "no_such_module_xyz:app", "--url", "{url}"], id="worker-no-module"),
    pytest.param(
        2, ["worker", WORKER_APP, "--topic", "nope", "--url", "{url}"], id="worker-unknown-topic"
    ),
    pytest.param(
        1, ["dlq", "list", "no-such-topic", "--group", "g", "--url", "{url}"], id="dlq-no-topic"
    ),
]


@pytest.mark.parametrize(("expected", "args"), BAD_INPUTS)
def test_bad_input_is_one_clear_error_and_no_traceback(expected, args, url, processes):
    port = free_port()
    args = [a.format(url=url, port=port) for a in args]

    code, output = run_cli(processes, *args)

    assert code == expected, output
    assert "Traceback" not in output, output
    assert len(error_lines(output)) == 1, output


def test_error_stays_on_one_line_when_output_is_piped(processes):
    url = UNREACHABLE.format(port=free_port())

    code, output = run_cli(processes, "status", "--url", url)

    assert code == 1
    assert output.strip().count("\n") == 0, output


def test_error_text_is_not_read_as_markup(url, processes):
    code, output = run_cli(processes, "dlq", "list", "a[/b]", "--group", "g", "--url", url)

    assert "Traceback" not in output, output
    assert code == 1
    assert "a[/b]" in output


def test_status_shows_a_down_broker_instead_of_failing(tmp_path):
    from redismq.brokers import add_broker

    with LocalServer() as meta, LocalServer() as b1, LocalServer() as b2:
        client = Client(meta.url)
        add_broker(client, "b1", b1.url)
        add_broker(client, "b2", b2.url)
        client.create_topic("spread", queues=4)
        client.send_many("spread", list(range(8)))
        b2.kill()
        out = subprocess.run(
            [sys.executable, "-m", "redismq.cli.main", "status", "--json", "--url", meta.url],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 0, out.stderr
        snap = json.loads(out.stdout)
        down = {b["name"]: b["up"] for b in snap["brokers"]}
        assert down == {"b1": True, "b2": False}
        [topic] = snap["topics"]
        placement = client.topic("spread").placement
        assert topic["unreachable_queues"] == [q for q, b in enumerate(placement) if b == "b2"]


def test_send_file_sends_every_line_and_refuses_a_bad_one(client, url, tmp_path):
    good = tmp_path / "good.jsonl"
    good.write_text("\n".join(json.dumps({"n": i}) for i in range(1200)) + "\n\n")
    result = CliRunner().invoke(
        main, ["send", "bulk", "--file", str(good), "--create", "--url", url]
    )
    assert result.exit_code == 0, result.output
    assert "sent 1200 messages" in result.output
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"n": 1}\n{oops\n')
    result = CliRunner().invoke(main, ["send", "other", "--file", str(bad), "--url", url])
    assert result.exit_code == 2 and "line 2" in result.output
    status = json.loads(CliRunner().invoke(main, ["status", "--json", "--url", url]).output)
    lengths = {t["name"]: t["length"] for t in status["topics"]}
    assert lengths == {"bulk": 1200}  # nothing of the bad file was sent


def test_dlq_show_and_purge(client, url):
    client.create_topic("mail", queues=1)
    consumer = client.consumer("mail", "g")
    for i in range(3):
        client.send("mail", {"n": i})
    msgs = consumer.receive(count=10, block=0.2)
    for m in msgs:
        consumer.dead_letter(m, f"bad [address] {m.body['n']}")
    shown = CliRunner().invoke(
        main, ["dlq", "show", "mail", "--group", "g", "--id", msgs[0].id, "--url", url]
    )
    assert shown.exit_code == 0 and "bad [address] 0" in shown.output
    refused = CliRunner().invoke(
        main, ["dlq", "purge", "mail", "--group", "g", "--url", url], input="n\n"
    )
    assert refused.exit_code == 1 and len(client.dead_letters("mail", "g")) == 3
    one = CliRunner().invoke(
        main, ["dlq", "purge", "mail", "--group", "g", "--id", msgs[1].id, "--yes", "--url", url]
    )
    assert "purged 1" in one.output
    assert {d.id for d in client.dead_letters("mail", "g")} == {msgs[0].id, msgs[2].id}
    rest = CliRunner().invoke(main, ["dlq", "purge", "mail", "--group", "g", "--yes", "--url", url])
    assert "purged 2" in rest.output and client.dead_letters("mail", "g") == []
    status = json.loads(CliRunner().invoke(main, ["status", "--json", "--url", url]).output)
    assert status["topics"][0]["groups"][0]["dead"] == 0
