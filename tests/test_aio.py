"""The asyncio producer (redismq.aio.AsyncClient) against a real server, read back with the
sync consumer: same placement, dedup, delay, batch order and errors as the sync client."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import pytest

from redismq import (
    AsyncClient,
    AsyncJob,
    BrokerUnavailable,
    Client,
    InvalidMessage,
    TopicExists,
    TopicNotFound,
)
from redismq.keys import QueueKeys
from redismq.routing import queue_for_key
from tests.conftest import round_trips
from tests.test_outcome import run_until_idle


def stream_len(client: Client, topic: str, queue: int) -> int:
    return client.meta.xlen(QueueKeys("rmq", topic, queue).stream)


def receive_all(consumer, n: int, timeout: float = 5.0) -> list:
    """Receive and acknowledge until n messages came (or the timeout passed)."""
    got: list = []
    deadline = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        batch = consumer.receive(count=100, block=0.2)
        consumer.ack_many(batch)
        got += batch
    return got


def test_async_send_is_received_by_the_sync_consumer(url, client):
    async def main() -> tuple[str, str]:
        async with AsyncClient(url) as ac:
            await ac.create_topic("emails", queues=4)
            mid = await ac.send("emails", {"to": "a@b.c"}, headers={"trace": "t1"})
            raw = await ac.send("emails", b"\x00raw")
            return mid, raw

    mid, raw = asyncio.run(main())
    got = receive_all(client.consumer("emails", "mailer"), 2)
    by_id = {m.id: m for m in got}
    assert set(by_id) == {mid, raw}
    assert by_id[mid].body == {"to": "a@b.c"}
    assert by_id[mid].headers == {"trace": "t1"}
    assert by_id[raw].body == b"\x00raw"


def test_create_topic_places_like_the_sync_client_and_checks_the_shape(url, client):
    async def main():
        async with AsyncClient(url) as ac:
            first = await ac.create_topic("orders", queues=6)
            again = await ac.create_topic("orders", queues=6)
            with pytest.raises(TopicExists, match="exists with 6 queues, not 3"):
                await ac.create_topic("orders", queues=3)
            with pytest.raises(InvalidMessage, match="queues must be a whole number"):
                await ac.create_topic("orders", queues=0)
            return first, again, await ac.topics()

    first, again, names = asyncio.run(main())
    assert first.queues == again.queues == client.topic("orders").queues == 6
    assert first.placement == client.topic("orders").placement
    assert names == ["orders"]


def test_key_goes_to_the_same_queue_as_with_the_sync_client(url, client):
    client.create_topic("orders", queues=8)
    sync_sent = client.send_message("orders", {"from": "sync"}, key="customer-42")

    async def main():
        async with AsyncClient(url) as ac:
            return [await ac.send_message("orders", {"n": i}, key="customer-42") for i in range(10)]

    sent = asyncio.run(main())
    queue = queue_for_key("customer-42", 8)
    assert {s.queue for s in sent} == {sync_sent.queue} == {queue}
    stream = QueueKeys("rmq", "orders", queue).stream
    bodies = [f[b"body"] for _, f in client.meta.xrange(stream)]
    assert bodies == [b'{"from":"sync"}'] + [b'{"n":%d}' % i for i in range(10)]


def test_dedup_key_resend_returns_the_first_id(url, client):
    async def main():
        async with AsyncClient(url) as ac:
            first = await ac.send("signup", {"user": 1}, dedup_key="user-1")
            again = await ac.send("signup", {"user": 1}, dedup_key="user-1")
            other = await ac.send("signup", {"user": 2}, dedup_key="user-2")
            return first, again, other

    first, again, other = asyncio.run(main())
    assert again == first != other
    # The sync client sees the same dedup record: both clients build the same script call.
    assert client.send("signup", {"user": 1}, dedup_key="user-1") == first
    assert sum(stream_len(client, "signup", q) for q in range(4)) == 2


def test_delayed_message_is_visible_at_or_after_its_due_time(url, client):
    c = client.consumer("later", "g", create=True)
    sent_at = time.time()

    async def main() -> str:
        async with AsyncClient(url) as ac:
            return await ac.send("later", {"x": 1}, delay=0.5)

    mid = asyncio.run(main())
    assert c.receive(count=10, block=0.1) == []
    got = []
    deadline = time.time() + 5
    while not got and time.time() < deadline:
        got = c.receive(count=10, block=0.2)
    assert [m.id for m in got] == [mid]
    waited = time.time() - sent_at
    assert 0.5 <= waited < 1.5, waited  # at its due time, not seconds after it


def test_send_many_returns_ids_in_order_and_spreads_round_robin(url, client):
    client.create_topic("bulk", queues=4)

    async def main() -> list[str]:
        async with AsyncClient(url) as ac:
            return await ac.send_many("bulk", [{"n": i} for i in range(240)])

    ids = asyncio.run(main())
    assert len(set(ids)) == 240
    assert [stream_len(client, "bulk", q) for q in range(4)] == [60, 60, 60, 60]
    got = receive_all(client.consumer("bulk", "g"), 240)
    assert [{m.id: m.body["n"] for m in got}[i] for i in ids] == list(range(240))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"body": object()}, "not JSON-serialisable"),
        ({"body": "x" * (1024 * 1024 + 1)}, "over the limit"),
        ({"body": 1, "delay": -1}, "must not be negative"),
        ({"body": 1, "delay": "soon"}, "number of seconds"),
    ],
)
def test_bad_sends_fail_clearly_and_send_nothing(url, client, kwargs, match):
    client.create_topic("bad", queues=1)

    async def main() -> None:
        async with AsyncClient(url) as ac:
            with pytest.raises(InvalidMessage, match=match):
                await ac.send("bad", **kwargs)
            with pytest.raises(InvalidMessage, match="not JSON-serialisable"):
                await ac.send_many("bad", [1, object()])

    asyncio.run(main())
    assert stream_len(client, "bad", 0) == 0


def test_missing_topic_is_an_error_when_auto_creation_is_off(url, client):
    async def main() -> None:
        async with AsyncClient(url, auto_create_topics=False) as ac:
            with pytest.raises(TopicNotFound, match="redismq topic create other"):
                await ac.send("other", {"a": 1})
        async with AsyncClient(url) as ac:
            await ac.send("fresh", {"a": 1})

    asyncio.run(main())
    assert client.topics() == ["fresh"]


def test_unreachable_server_is_one_line_with_the_password_masked():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    async def main() -> BrokerUnavailable:
        async with AsyncClient(f"redis://:hunter2@127.0.0.1:{port}/0", send_timeout=0) as ac:
            with pytest.raises(BrokerUnavailable) as info:
                await ac.send("emails", {"to": "a@b.c"})
            return info.value

    error = asyncio.run(main())
    text = str(error)
    assert text.startswith(f"cannot reach Redis at redis://:***@127.0.0.1:{port}/0")
    assert "hunter2" not in text and "\n" not in text
    assert error.__cause__ is None and error.__suppress_context__


def test_route_cache_rereads_the_version_at_most_once_a_second(url, client):
    client.create_topic("moving", queues=4)

    async def main() -> tuple[int, int]:
        async with AsyncClient(url) as ac:
            await ac.send("moving", 1)
            # Another process replaces the topic (the route version changes).
            client.meta.hdel(client.router.keys.topics, "moving")
            client.create_topic("moving", queues=2)
            cached = (await ac.topic("moving")).queues
            await asyncio.sleep(1.05)
            return cached, (await ac.topic("moving")).queues

    assert asyncio.run(main()) == (4, 2)


def test_task_send_async_runs_on_a_sync_worker(client, app):
    @app.task(topic="math")
    def add(x, y):
        return x + y

    async def main():
        try:
            return await add.send_async(2, 3)
        finally:
            await app.async_client.aclose()

    with round_trips() as sync_trips:
        job = asyncio.run(main())
    assert sync_trips == []  # sent by the async client, not through the blocking sync one
    assert (app.async_client.url, app.async_client.namespace) == (client.url, client.namespace)
    job = client.job(job.id)  # read from sync code: by its id
    assert job.status() == "queued"
    run_until_idle(client, app, "math")
    assert job.result(timeout=5) == 5


def test_a_job_sent_from_async_code_is_awaited_without_blocking_the_loop(client, app):
    """`await task.send_async(...)` gives an AsyncJob: `await job.result()` waits for the
    worker (here a thread) while the event loop goes on."""

    @app.task(topic="math")
    def add(x, y):
        return x + y

    async def main():
        ticks = 0

        async def tick():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        ticker = asyncio.create_task(tick())
        try:
            job = await add.send_async(2, 3)
            assert isinstance(job, AsyncJob)
            worker = threading.Timer(0.5, run_until_idle, (client, app, "math"))
            worker.start()
            result = await job.result(timeout=10)
            worker.join()
            return result, ticks, await job.status()
        finally:
            ticker.cancel()
            await app.async_client.aclose()

    result, ticks, status = asyncio.run(main())
    assert (result, status) == (5, "done")
    assert ticks >= 10  # the loop ran while the job waited for its worker


def test_send_with_options_async_keeps_the_options(client):
    import asyncio

    from redismq import App
    from tests.test_outcome import run_until_idle

    app = App()
    app.connect(client)

    @app.task(topic="aio-opts")
    def mul(x, y):
        return x * y

    async def go():
        first = await mul.send_with_options_async(args=(3, 4), dedup_key="once", key="k")
        again = await mul.send_with_options_async(args=(3, 4), dedup_key="once", key="k")
        await app.async_client.aclose()
        return first, again

    with round_trips() as sync_trips:
        first, again = asyncio.run(go())
    assert sync_trips == []  # sent by the async client, not through the blocking sync one
    assert first.id == again.id
    run_until_idle(client, app, "aio-opts")
    assert client.job(first.id).result(timeout=5) == 12
