"""Clocks on a real server: a worker or producer whose clock is off neither prunes done
records still needed nor makes delayed messages and retries due early (or late); the
scripts use the server's TIME."""

from __future__ import annotations

import importlib
import time
from pkgutil import iter_modules

import pytest

import redismq
from redismq.message import now_ms

DAYS_10 = 10 * 86_400_000


@pytest.fixture
def topic(client) -> str:
    client.create_topic("clock", queues=1)
    return "clock"


def skew(monkeypatch, ms: int) -> None:
    """This process's clock, as every redismq module reads it, off by `ms`."""
    modules = [importlib.import_module(f"redismq.{m.name}") for m in iter_modules(redismq.__path__)]
    readers = [m for m in modules if getattr(m, "now_ms", None) is now_ms]
    # the modules that receive, settle and send, at least (a list kept by hand missed one)
    assert {"redismq.fetching", "redismq.outcomes", "redismq.client", "redismq.aio"} <= {
        m.__name__ for m in readers
    }
    for module in readers:
        monkeypatch.setattr(module, "now_ms", lambda: now_ms() + ms)


def done_key(client, group: str) -> str:
    return client.router.queue_keys("clock", 0).done(group)


def test_a_consumer_whose_clock_runs_ahead_prunes_no_done_record_still_needed(
    client, topic, monkeypatch
):
    honest = client.consumer(topic, "g", name="honest")
    ahead = client.consumer(topic, "g", name="ahead")
    first = client.send(topic, 1)
    assert honest.ack_many(honest.receive(count=10, block=1)) == 1
    client.send(topic, 2)
    skew(monkeypatch, DAYS_10)
    assert ahead.ack_many(ahead.receive(count=10, block=1)) == 1
    assert client.meta.zscore(done_key(client, "g"), first) is not None


def test_a_consumer_whose_clock_runs_ahead_moves_no_delayed_message_early(
    client, topic, monkeypatch
):
    consumer = client.consumer(topic, "g")
    client.send(topic, "later", delay=60)
    skew(monkeypatch, DAYS_10)
    assert consumer.receive(count=10, block=0.3) == []


def test_a_producer_whose_clock_runs_behind_delays_by_the_delay_asked(client, topic, monkeypatch):
    consumer = client.consumer(topic, "g")
    skew(monkeypatch, -DAYS_10)
    client.send(topic, "later", delay=60)
    assert consumer.receive(count=10, block=0.3) == []


def test_a_retry_scheduled_by_a_consumer_whose_clock_runs_ahead_comes_back_on_time(
    client, topic, monkeypatch
):
    ahead = client.consumer(topic, "g", name="ahead")
    honest = client.consumer(topic, "g", name="honest")
    client.send(topic, 1)
    [msg] = ahead.receive(count=10, block=1)
    with monkeypatch.context() as m:
        skew(m, DAYS_10)
        assert ahead.retry(msg, "ValueError: again", delay=0.2) == "retry"
    deadline = time.monotonic() + 5
    got = []
    while not got and time.monotonic() < deadline:
        got = honest.receive(count=10, block=0.2)
    assert [m.body for m in got] == [1]
