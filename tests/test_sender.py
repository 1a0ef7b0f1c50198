"""A sending thread's own connection (`Broker.sender`): one per thread, given back when the
thread ends, never shared with a forked child, closed with the client."""

from __future__ import annotations

import gc
import logging
import os
import threading
import time

import redis

from redismq import Client
from redismq.brokers import add_broker
from redismq.health import DEFAULT_BROKER
from redismq.keys import QueueKeys
from redismq.scripts import SyncScript
from redismq.server import LocalServer
from tests.conftest import wait_for


def others(admin: redis.Redis) -> int:
    """Connections to the server besides the admin's own."""
    me = admin.client_id()
    return sum(1 for c in admin.client_list() if int(c["id"]) != me)


def in_thread(fn) -> None:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            fn()
        except BaseException as exc:  # noqa: BLE001 - raised in the test's thread
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]


def test_threads_that_ended_give_their_connection_back():
    with LocalServer() as srv:
        admin = redis.Redis.from_url(srv.url)
        client = Client(srv.url)
        client.create_topic("mail", queues=2)
        for i in range(12):  # each thread sends, then ends: the next one takes its connection
            in_thread(lambda i=i: [client.send("mail", {"t": i, "n": n}) for n in range(5)])
            gc.collect()
        assert sum(client.meta.xlen(QueueKeys("rmq", "mail", q).stream) for q in range(2)) == 60
        held: list[int] = []
        broker = client.router.broker(DEFAULT_BROKER)
        in_thread(lambda: held.append(broker.sender().client_id()))
        gc.collect()
        assert broker.sender().client_id() == held[0]  # back in the pool, lent again
        # the meta connection and one sender (+1 for a health check's), not one per thread
        assert others(admin) <= 3, admin.client_list()
        client.close()
        assert wait_for(lambda: others(admin) == 0), admin.client_list()
        admin.close()


def test_a_thread_sends_on_one_connection_of_its_own():
    with LocalServer() as srv:
        client = Client(srv.url)
        client.create_topic("mail", queues=1)
        broker = client.router.broker(DEFAULT_BROKER)
        mine = broker.sender()
        assert broker.sender() is mine
        seen: list[int] = []
        in_thread(lambda: seen.append(broker.sender().client_id()))
        assert seen[0] != mine.client_id()
        before = mine.client_id()
        client.send("mail", "hello")
        assert mine.client_id() == before  # the send went on it: no reconnect
        client.close()


def test_a_forked_child_sends_on_its_own_connection():
    with LocalServer() as srv:
        client = Client(srv.url)
        client.create_topic("mail", queues=1)
        client.send("mail", "from the parent")
        broker = client.router.broker(DEFAULT_BROKER)
        parent = broker.sender().client_id()
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: report its sender's connection id, then leave at once
            try:
                client.send("mail", "from the child")
                os.write(write, str(broker.sender().client_id()).encode())
            finally:
                os._exit(0)
        os.close(write)
        child = int(os.read(read, 100) or b"0")
        os.close(read)
        os.waitpid(pid, 0)
        client.send("mail", "from the parent again")
        assert child and child != parent
        assert broker.sender().client_id() == parent
        assert client.meta.xlen(QueueKeys("rmq", "mail", 0).stream) == 3
        client.close()


def test_closing_the_client_closes_every_broker_s_connections():
    """As `AsyncClient.aclose` does: the meta Redis's, and those of the other brokers (the
    pool's and every thread's own)."""
    with LocalServer() as meta, LocalServer() as other:
        client = Client(meta.url)
        add_broker(client, "b1", other.url)
        client.create_topic("mail", queues=2)
        sent, closed = threading.Event(), threading.Event()

        def sender() -> None:  # a thread that holds its connections past the close
            for n in range(4):
                client.send("mail", n)
            sent.set()
            closed.wait(30)

        thread = threading.Thread(target=sender)
        thread.start()
        sent.wait(30)
        admin = redis.Redis.from_url(other.url)
        assert others(admin) >= 1
        client.close()
        try:
            assert wait_for(lambda: others(admin) == 0), admin.client_list()
        finally:
            closed.set()
            thread.join()
        admin.close()


def test_a_send_after_its_connection_was_closed_goes_on_a_new_one_at_once(caplog):
    """A send's script call skips the client's per-command steps but not the connection's
    retry: a held connection the server closed (a restart, its idle timeout, CLIENT KILL)
    is connected again and the call sent once more, with no outage to ride out."""
    with LocalServer() as srv:
        admin = redis.Redis.from_url(srv.url)
        client = Client(srv.url)
        client.create_topic("mail", queues=1)
        client.send("mail", "before")
        sender = client.router.broker(DEFAULT_BROKER).sender()
        before = sender.client_id()
        admin.client_kill_filter(_id=before)
        started = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="redismq"):
            client.send("mail", "after")
        assert time.monotonic() - started < 1.0  # not an outage's backoff
        assert not [r for r in caplog.records if "trying again" in r.getMessage()]
        assert client.router.usable(DEFAULT_BROKER)
        assert sender.client_id() != before
        assert client.meta.xlen(QueueKeys("rmq", "mail", 0).stream) == 2
        client.close()
        admin.close()


def test_a_users_single_connection_client_is_safe_to_share_between_threads():
    """Only a send's own connection (one per thread) skips redis-py's per-command steps; a
    single-connection client given to the Client keeps redis-py's lock (found by a review:
    four threads calling scripts through one got each other's replies)."""
    with LocalServer() as srv:
        shared = redis.Redis.from_url(srv.url, single_connection_client=True)
        echo = SyncScript(shared, "return ARGV[1]")
        wrong: list[tuple[str, object]] = []

        def call(n: int) -> None:
            for i in range(500):
                want = f"{n}-{i}"
                got = echo(args=[want])
                if got != want.encode():
                    wrong.append((want, got))

        threads = [threading.Thread(target=call, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert wrong == []
        shared.close()
