"""The scheduler's tick on a real server: a periodic task whose send fails (its topic is
full) neither holds back the others nor floods the log."""

from __future__ import annotations

import logging
import time

from redismq import App
from redismq.workers.scheduler import Scheduler


def test_a_periodic_that_cannot_be_sent_leaves_the_others_and_says_so_once(
    client, caplog, monkeypatch
):
    app = App(client)
    client.create_topic("full", queues=1, max_backlog=1)
    client.create_topic("free", queues=1)
    client.consumer("full", "workers")  # the group whose backlog the bound counts
    client.send("full", {"filler": True})

    @app.periodic(every=60, topic="full")
    def blocked():
        pass

    @app.periodic(every=60, topic="free")
    def hourly():
        pass

    now = (time.time() // 60) * 60 + 1  # one second past a tick of both
    monkeypatch.setattr("redismq.workers.scheduler.time.time", lambda: now)
    scheduler = Scheduler(client, app.periodics)
    with caplog.at_level(logging.WARNING, logger="redismq"):
        for _ in range(3):
            scheduler.tick()
    assert _queued(client, "free") == 1
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 1 and "blocked" in lines[0] and "full" in lines[0], lines


def _queued(client, topic: str) -> int:
    return client.meta.xlen(client.router.queue_keys(topic, 0).stream)
