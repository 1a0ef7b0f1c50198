"""The life of groups and topics: list, delete (refused while work is unfinished), and
what status shows about groups nobody consumes and topics nobody reads."""

from __future__ import annotations

import json
import time

import pytest
import redis
from click.testing import CliRunner

from redismq import Client, fetching, retention
from redismq.cli.main import main
from redismq.lifecycle import InUse
from tests.conftest import wait_for


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


def test_group_list_shows_counts_and_no_live_consumer(client: Client, url: str):
    client.create_topic("mail", 2)
    client.send_many("mail", [{"n": i} for i in range(5)])
    c = client.consumer("mail", "mailer")
    c.ack_many(c.receive(2, block=0.2))
    [row] = client.groups("mail")
    assert (row["name"], row["done"], row["live"]) == ("mailer", 2, False)
    assert row["pending"] + row["lag"] == 3
    code, out = invoke("group", "list", "mail", "--url", url)
    assert code == 0 and "mailer" in out and "no live consumer" in out
    code, out = invoke("group", "list", "mail", "--json", "--url", url)
    assert json.loads(out)[0]["name"] == "mailer"


def test_group_delete_refuses_while_work_is_unfinished_unless_forced(client: Client, url: str):
    client.create_topic("mail", 2, retention=3)
    client.consumer("mail", "keep")
    old = client.consumer("mail", "old")
    client.send_many("mail", [{"n": i} for i in range(10)])
    got = old.receive(10, block=0.2)
    old.dead_letter(got[0], "broken")  # one dead, the rest pending
    code, out = invoke("group", "delete", "mail", "old", "--url", url)
    assert code == 1 and "pending" in out and "dead" in out and "--force" in out
    assert "old" in client.router.groups("mail")
    code, out = invoke("group", "delete", "mail", "old", "--force", "--url", url)
    assert code == 0, out
    assert [g["name"] for g in client.groups("mail")] == ["keep"]
    # nothing of it pins retention: once `keep` is done, trimming keeps only `retention`
    keep = Client(url).consumer("mail", "keep")
    while batch := keep.receive(100, block=0.2):
        keep.ack_many(batch)
    Client(url).trim("mail")
    streams = [client.router.queue_keys("mail", q).stream for q in range(2)]
    assert sum(client.meta.xlen(s) for s in streams) <= 2 * 3
    assert all(
        "old" not in {g["name"].decode() for g in client.meta.xinfo_groups(s)} for s in streams
    )
    assert not [k for k in client.meta.scan_iter("rmq:{mail#*") if k.endswith(b":old")]
    with pytest.raises(InUse, match="no group"):
        client.delete_group("mail", "old")


def test_topic_delete_refuses_while_anything_is_unfinished(client: Client, url: str):
    client.create_topic("events", 3)
    c = client.consumer("events", "g")
    client.send("events", {"n": 1}, dedup_key="d")
    code, out = invoke("topic", "delete", "events", "--url", url)
    assert code == 1 and "unfinished" in out
    c.ack_many(c.receive(10, block=0.2))
    code, out = invoke("topic", "delete", "events", "--url", url)
    assert code == 0, out
    assert "events" not in client.topics()
    assert not [k for k in client.meta.scan_iter("rmq:{events#*")]
    assert client.meta.scard(client.router.keys.groups("events")) == 0
    client.create_topic("events2", 1)
    client.send("events2", {"n": 1})
    client.delete_topic("events2", force=True)
    assert "events2" not in Client(url).topics()


def test_status_marks_groups_without_live_consumers_and_topics_without_groups(client, url):
    client.create_topic("orphan", 1)
    client.create_topic("read", 1)
    client.consumer("read", "g")
    code, out = invoke("status", "--json", "--url", url)
    data = json.loads(out)
    topics = {t["name"]: t for t in data["topics"]}
    assert topics["orphan"]["no_group"] is True and topics["read"]["no_group"] is False
    assert topics["read"]["groups"][0]["live"] is False
    code, out = invoke("status", "--url", url)
    assert code == 0
    assert "no group" in out and "no live consumer" in out


def test_sending_to_a_missing_topic_creates_it_and_says_so_once(client, caplog):
    with caplog.at_level("WARNING", logger="redismq.client"):
        client.send("typo", {"n": 1})
        client.router.invalidate()
        client.send("typo", {"n": 2})
    said = [r for r in caplog.records if "did not exist" in r.getMessage()]
    assert len(said) == 1 and "'typo'" in said[0].getMessage()
    assert "typo" in client.topics()


def test_a_consumer_leaves_its_group_when_its_client_closes_or_its_block_ends(url: str):
    """A consumer that was never closed stayed in its group for good: one more name on
    every stream for each process that consumed and exited (only a worker's janitor
    prunes them, and only where a worker runs). Closing the client closes them now, as
    leaving a `with` block does; one that still holds a message stays (to be taken over)."""
    client = Client(url)
    client.create_topic("leaving", queues=1)
    client.send_many("leaving", [1, 2, 3])
    stream = client.router.queue_keys("leaving", 0).stream
    server = redis.Redis.from_url(url)

    def names() -> list[str]:
        return sorted(c["name"].decode() for c in server.xinfo_consumers(stream, "g"))

    with client.consumer("leaving", "g", name="block") as consumer:
        consumer.ack_many(consumer.receive(count=1, block=1))
        assert names() == ["block"]
    assert names() == []
    done = client.consumer("leaving", "g", name="done")
    done.ack_many(done.receive(count=1, block=1))
    holding = client.consumer("leaving", "g", name="holding")
    assert len(holding.receive(count=1, block=1)) == 1  # not acknowledged: held
    assert names() == ["done", "holding"]
    client.close()
    assert names() == ["holding"]
    server.close()


def test_a_consumer_never_closed_leaves_its_group_once_idle_by_the_others_reads(
    url: str, monkeypatch
):
    """A process killed (or careless) left its consumers in their groups for good: only a
    worker's janitor pruned them, and only where a worker ran. A consumer's reads retire
    the consumers of its queues that hold nothing and did not read for `CONSUMER_IDLE`;
    one that holds a message stays (deleting it would drop the message)."""
    monkeypatch.setattr(retention, "CONSUMER_IDLE", 0.5)
    monkeypatch.setattr(fetching, "RETIRE_EVERY", 0.2)
    gone, reader = Client(url), Client(url)  # `gone`: a process that exited, closing nothing
    gone.create_topic("idle", queues=1)
    gone.send_many("idle", [1, 2])
    stream = gone.router.queue_keys("idle", 0).stream
    server = redis.Redis.from_url(url)

    def names() -> list[str]:
        return sorted(c["name"].decode() for c in server.xinfo_consumers(stream, "g"))

    done = gone.consumer("idle", "g", name="done")
    done.ack_many(done.receive(count=1, block=1))
    holding = gone.consumer("idle", "g", name="holding")
    assert len(holding.receive(count=1, block=1)) == 1  # not acknowledged: held
    live = reader.consumer("idle", "g", name="live")
    assert live.receive(count=1, block=0.01) == [] and names() == ["done", "holding", "live"]
    time.sleep(0.6)  # `done` and `holding` idle past CONSUMER_IDLE; `live` reads on
    assert wait_for(lambda: not live.receive(count=1, block=0.05) and "done" not in names())
    assert names() == ["holding", "live"]
    reader.close()
    server.close()
