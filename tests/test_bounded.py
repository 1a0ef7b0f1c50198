"""Bounded topics: producers meet back-pressure instead of an ever-growing backlog."""

from __future__ import annotations

import threading
import time

import pytest

from redismq import TopicFull
from redismq.status import topic_status


def test_full_topic_refuses_at_once_and_keeps_what_it_holds(client):
    client.create_topic("bounded", queues=2, max_backlog=10)
    client.consumer("bounded", "slow")  # a group that reads nothing yet
    sent = [client.send("bounded", {"n": i}) for i in range(10)]
    with pytest.raises(TopicFull, match="bound of 10"):
        client.send("bounded", {"n": 10})
    status = topic_status(client, "bounded")
    assert (status["length"], status["backlog"], status["max_backlog"]) == (10, 10, 10)
    consumer = client.consumer("bounded", "slow")
    got = consumer.receive(count=100, block=0.2)
    assert sorted(m.id for m in got) == sorted(sent)
    with pytest.raises(TopicFull):  # received but not acknowledged still counts
        client.send("bounded", {"n": 10})
    consumer.ack_many(got)
    assert client.send("bounded", {"n": 10})


def test_blocking_sends_resume_as_the_consumer_catches_up(client):
    client.create_topic("bounded", queues=2, max_backlog=10)
    consumer = client.consumer("bounded", "slow", visibility_timeout=30)
    done: list[int] = []
    highest = [0]
    stop = threading.Event()

    def consume() -> None:
        while not stop.is_set():
            batch = consumer.receive(count=3, block=0.1)
            time.sleep(0.02)  # slower than the producer
            consumer.ack_many(batch)
            done.extend(m.body["n"] for m in batch)

    def watch() -> None:
        while not stop.is_set():
            highest[0] = max(highest[0], topic_status(client, "bounded")["backlog"])
            time.sleep(0.005)

    threads = [threading.Thread(target=consume), threading.Thread(target=watch)]
    for t in threads:
        t.start()
    try:
        for i in range(100):
            client.send("bounded", {"n": i}, on_full="block", timeout=20)
        deadline = time.monotonic() + 20
        while len(done) < 100 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert sorted(done) == list(range(100))
    assert highest[0] <= 10


def test_blocking_send_gives_up_after_its_timeout(client):
    client.create_topic("bounded", queues=1, max_backlog=2)
    client.consumer("bounded", "g")
    client.send("bounded", 1)
    client.send("bounded", 2)
    started = time.monotonic()
    with pytest.raises(TopicFull):
        client.send("bounded", 3, on_full="block", timeout=0.3)
    assert time.monotonic() - started >= 0.3
    assert topic_status(client, "bounded")["length"] == 2


def test_send_many_respects_the_bound(client):
    client.create_topic("bounded", queues=2, max_backlog=6)
    client.consumer("bounded", "g")
    assert len(client.send_many("bounded", list(range(6)))) == 6
    with pytest.raises(TopicFull):
        client.send_many("bounded", [6, 7])
    assert topic_status(client, "bounded")["length"] == 6
