"""Issue 14, item 9: `dlq list --json` and full ids when piped, `dlq show` with ids as
arguments, dates instead of milliseconds, one line for a server that wants a password, and
the same default URL in `App()` and the CLI. Real servers."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess

import pytest
import redis
from click.testing import CliRunner

from redismq import App, BrokerUnavailable, Client
from redismq.cli.common import url_option
from redismq.cli.main import main
from redismq.server import LocalServer
from redismq.urls import DEFAULT_URL

LONG_REASON = "SMTPRecipientsRefused: " + "the mail server refused the address " * 4
DATE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")


def dead_letters(client: Client, n: int = 3) -> list[str]:
    client.create_topic("mail", queues=2)
    ids = [client.send("mail", {"n": i}) for i in range(n)]
    consumer = client.consumer("mail", "g")
    for msg in consumer.receive(count=n, block=1):
        consumer.dead_letter(msg, LONG_REASON)
    return ids


def run_cli(processes, *args: str) -> tuple[int, str]:
    proc = processes.start(*args, env={"COLUMNS": "80"}, stdin=subprocess.DEVNULL)
    output, _ = proc.communicate(timeout=60)
    return proc.returncode, output


def test_dlq_list_json_has_full_ids_and_dates(client, url):
    ids = dead_letters(client)
    result = CliRunner().invoke(
        main, ["dlq", "list", "mail", "--group", "g", "--json", "--url", url]
    )
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert sorted(r["id"] for r in rows) == sorted(ids)
    row = rows[0]
    assert row["reason"] == LONG_REASON and row["attempts"] == 1
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", row["failed_at"])


def test_dlq_list_piped_never_cuts_an_id_and_shows_dates(client, url, processes):
    ids = dead_letters(client)
    code, output = run_cli(processes, "dlq", "list", "mail", "--group", "g", "--url", url)
    assert code == 0, output
    for mid in ids:
        assert mid in output, output
    assert DATE.search(output) and not re.search(r"\b1\d{12}\b(?!-)", output)
    # One line per dead letter, its reason whole (it was folded 3 characters wide).
    lines = [line for line in output.splitlines() if any(mid in line for mid in ids)]
    assert len(lines) == 3 and all(LONG_REASON.strip() in line for line in lines), output


def test_dlq_show_takes_ids_as_arguments_and_shows_dates(client, url):
    ids = dead_letters(client)
    result = CliRunner().invoke(
        main, ["dlq", "show", "mail", ids[0], ids[2], "--group", "g", "--url", url]
    )
    assert result.exit_code == 0, result.output
    assert ids[0] in result.output and ids[2] in result.output and ids[1] not in result.output
    assert DATE.search(result.output)
    assert not re.search(r"\b1\d{12}\b(?!-)", result.output)  # no millisecond timestamps
    missing = CliRunner().invoke(main, ["dlq", "show", "mail", "--group", "g", "--url", url])
    assert missing.exit_code == 2 and "give at least one id" in missing.output


@pytest.fixture(scope="module")
def locked() -> LocalServer:
    with LocalServer(password="s3cret") as srv:
        yield srv


def test_a_server_that_wants_a_password_says_so_in_one_line(locked, processes):
    bare = f"redis://127.0.0.1:{locked.port}/0"
    with pytest.raises(BrokerUnavailable) as caught:
        Client(bare).ping()
    assert "the server requires a password (put it in the URL: redis://:PASSWORD@host)" in str(
        caught.value
    )
    assert "HELLO" not in str(caught.value)
    code, output = run_cli(processes, "status", "--url", bare)
    assert code == 1
    [line] = output.strip().splitlines()
    assert line.startswith("error: ") and "requires a password" in line
    wrong = f"redis://:nope@127.0.0.1:{locked.port}/0"
    with pytest.raises(BrokerUnavailable, match="refused the password") as refused:
        Client(wrong).ping()
    assert "nope" not in str(refused.value)


@pytest.mark.parametrize("sync", [True, False], ids=["sync", "async"])
def test_a_missing_or_refused_password_is_not_tried_again(locked, sync):
    """An answer about the password will not change: the client reports it after one
    connection, not after its reconnect retries and their back-off."""
    from redismq.aio import AsyncClient

    admin = redis.Redis(host="127.0.0.1", port=locked.port, password="s3cret")

    def connections() -> int:
        return int(admin.info("stats")["total_connections_received"])

    async def ping_async(url: str) -> None:
        async with AsyncClient(url) as client:
            await client.ping()

    for url in (
        f"redis://127.0.0.1:{locked.port}/0",
        f"redis://:nope@127.0.0.1:{locked.port}/0",
    ):
        before = connections()
        with pytest.raises(BrokerUnavailable, match="password"):
            Client(url).ping() if sync else asyncio.run(ping_async(url))
        assert connections() - before == 1
    admin.close()


def test_app_and_cli_share_the_default_url(monkeypatch):
    monkeypatch.delenv("REDISMQ_URL", raising=False)
    assert App().client.url == DEFAULT_URL == Client().url
    default = next(p for p in main.commands["status"].params if p.name == "url").default
    assert default == DEFAULT_URL
    assert url_option  # the option every command shares
