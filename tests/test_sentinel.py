"""Sentinel failover: a broker given as a sentinel:// URL (1 master, 1 replica, 3 real
Sentinels) loses its master to SIGKILL while producers send with durability="replicated" and
dedup keys and a worker process runs the task.

Every send that returned (was acknowledged) is processed; sends that raised during the
failover are not acknowledged and are retried with the same dedup key until they are.
The NameServer reports the new master.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from apps import sideeffects
from apps.sentinel_app import TASK, TOPIC
from conftest import wait_for
from sentinels import Sentinels, Servers

from redismq import Client, RedisMQError
from redismq.brokers import add_broker, list_brokers
from redismq.nameserver import NameServer
from redismq.scripts import Scripts, SyncScript, round_trip
from redismq.urls import connect, no_resend_on_timeout

pytestmark = pytest.mark.fault

APP = "tests.apps.sentinel_app:app"
# What the worker may have run but not yet acknowledged when the master died: its one fetch
# loop holds one small batch (the producers are slower than the worker, so in the steady
# state batches hold a message or two). Such a message runs again after the failover:
# delivery is at least once, and its settle (XACK and done record) failed with the master.
IN_FLIGHT = 5


class Producer(threading.Thread):
    """Sends task messages with durability="replicated", each with its own dedup key, and
    retries a send that raised with the same dedup key until it returns."""

    def __init__(self, url: str, name: str) -> None:
        super().__init__(daemon=True, name=name)
        self.client = Client(url, durability="replicated", replica_timeout=0.5)
        self.prefix = name
        self.acked: list[str] = []
        self.attempted: list[str] = []
        self.failed_attempts = 0
        self.errors: list[str] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        n = 0
        while not self.stopping.is_set():
            key = f"{self.prefix}-{n}"
            body = {"task": TASK, "args": [key], "kwargs": {}}
            self.attempted.append(key)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    self.client.send(TOPIC, body, dedup_key=key)
                    self.acked.append(key)
                    break
                except RedisMQError as exc:  # not acknowledged: send it again, same dedup key
                    self.failed_attempts += 1
                    self.errors.append(type(exc).__name__)
                    time.sleep(0.1)
            n += 1
            time.sleep(0.02)
        self.client.close()


@pytest.fixture
def servers() -> Iterator[Servers]:
    started = Servers()
    yield started
    started.stop_all()


def test_sentinel_failover_loses_no_acknowledged_send(
    client, url, servers, tmp_path, processes, caplog
):
    caplog.set_level(logging.WARNING, "redismq.client")
    db = tmp_path / "runs.db"
    sideeffects.connect(db).close()
    master = servers.start()
    replica = servers.start(replica_of=master)
    sentinels = Sentinels(master)
    ns = NameServer(Client(url), interval=0.2)
    ns_thread = threading.Thread(target=ns.run, daemon=True)
    producers = [Producer(url, f"p{i}") for i in range(2)]
    try:
        sentinels.start()
        add_broker(client, "s", sentinels.url)
        client.create_topic(TOPIC, queues=4)
        ns_thread.start()
        processes.start(
            "worker",
            APP,
            "--url",
            url,
            "--processes",
            "1",
            "--concurrency",
            "1",
            "--visibility-timeout",
            "2",
            "--log-level",
            "ERROR",
            env={sideeffects.ENV_DB: str(db)},
        )
        for p in producers:
            p.start()
        assert wait_for(lambda: sideeffects.count(db, TASK) >= 30, timeout=30)
        assert wait_for(lambda: address(client) == f"127.0.0.1:{master.port}", timeout=10)
        # kill in the steady state, once the worker has caught up with the producers (not
        # while it runs through the backlog that built up while it started)
        assert wait_for(lambda: caught_up(db, producers), timeout=30)

        master.kill()

        assert wait_for(lambda: sentinels.master_address() == ("127.0.0.1", replica.port), 20)
        # the old master comes back and serves as the new master's replica, so that
        # replicated sends can be confirmed again (Sentinel would do this too, in ~10 s)
        master.restart()
        master.client().replicaof("127.0.0.1", replica.port)
        assert wait_for(lambda: address(client) == f"127.0.0.1:{replica.port}", timeout=15)
        acked_at_failover = sum(len(p.acked) for p in producers)
        assert wait_for(
            lambda: sum(len(p.acked) for p in producers) >= acked_at_failover + 30, timeout=30
        )
    finally:
        for p in producers:
            p.stopping.set()
        for p in producers:
            p.join(40)
        ns.stop()
        ns_thread.join(10)
        sentinels.stop()

    acked = [k for p in producers for k in p.acked]
    assert len(acked) == len(set(acked))
    assert wait_for(lambda: set(sideeffects.runs(db, TASK)) >= set(acked), timeout=30)
    runs = sideeffects.runs(db, TASK)
    missing = set(acked) - set(runs)
    assert not missing, f"acknowledged but never processed: {sorted(missing)[:10]}"
    assert set(runs) <= {k for p in producers for k in p.attempted}
    repeated = {k: n for k, n in runs.items() if n > 1}
    assert sum(n - 1 for n in repeated.values()) <= IN_FLIGHT, repeated
    # The failover was felt, and survived: as sends that raised and were sent again with
    # their dedup key, or as sends the client rode out by itself (send_timeout).
    rode_out = [r for r in caplog.records if "trying again" in r.getMessage()]
    assert sum(p.failed_attempts for p in producers) + len(rode_out) > 0
    [broker] = list_brokers(client)
    assert broker.health["up"] is True and broker.health["master"]["role"] == "master"
    print(
        f"acked {len(acked)}, repeated {repeated}, failed attempts", [p.errors for p in producers]
    )


def caught_up(db, producers: list[Producer]) -> bool:
    """Whether every message acknowledged so far has been processed."""
    acked = {k for p in producers for k in list(p.acked)}
    return acked <= set(sideeffects.runs(db, TASK))


def address(client: Client) -> str | None:
    """The master address the NameServer last recorded for broker "s"."""
    [broker] = list_brokers(client)
    return broker.health.get("address") if broker.health.get("up") else None


def test_a_threads_own_connection_follows_sentinel_to_the_new_master(servers) -> None:
    """A send and a blocking read go on the calling thread's own connection (never handed
    back to the pool). After a failover it must ask Sentinel for the master again: redis-py
    connects a closed connection again to the address it had, and with the old master back
    as a replica there, sends and reads kept failing (READONLY) until the send's deadline."""
    master = servers.start()
    replica = servers.start(replica_of=master)
    with Sentinels(master) as sentinels:
        client = Client(sentinels.url, send_timeout=10)
        client.create_topic("follow", queues=1)
        consumer = client.consumer("follow", "g", create=True)
        client.send_message("follow", b"before")
        [first] = consumer.receive(count=1, block=1.0)
        consumer.ack(first)

        master.kill()
        assert wait_for(lambda: sentinels.master_address() == ("127.0.0.1", replica.port), 20)
        master.restart()  # at its old address, as a replica of the new master
        master.client().replicaof("127.0.0.1", replica.port)

        client.send_message("follow", b"after")
        assert [m.body for m in consumer.receive(count=1, block=5.0)] == [b"after"]
        assert replica.client().xlen(client.router.queue_keys("follow", 0).stream) >= 1
        client.close()


def test_a_held_connection_that_timed_out_reads_no_late_reply(servers) -> None:
    """A send's timeout is raised, not retried (its record makes a late copy a no-op), and
    a Sentinel connection keeps its socket after a timeout: the late reply stayed unread on
    the thread's own connection (the pool never checks a held one), and every call after it
    read the reply of the one before (a send its predecessor's; a fetch thread's reads,
    settles and waits each other's). A connection that failed is now closed."""
    master = servers.start()
    servers.start(replica_of=master)  # Sentinels start once they see a replica
    with Sentinels(master) as sentinels:
        held = connect(sentinels.url, socket_timeout=0.3).client()
        connection = held.connection
        script = SyncScript(held, "return ARGV[1]")
        assert script.on_connection(held, [], ["loaded"]) == b"loaded"

        def stalled(call):
            os.kill(master.pid, signal.SIGSTOP)  # the master stalls past the timeout
            try:
                with pytest.raises(redis.TimeoutError), no_resend_on_timeout():
                    call()
            finally:
                time.sleep(0.5)
                os.kill(master.pid, signal.SIGCONT)
            time.sleep(0.2)  # the late reply arrives

        stalled(lambda: script.on_connection(held, [], ["late"]))
        assert script.on_connection(held, [], ["mine"]) == b"mine"
        stalled(lambda: round_trip(connection, [("ECHO", "late")]))
        assert round_trip(connection, [("SET", "k", "v"), ("GET", "k")]) == [b"OK", b"v"]
        held.close()


def stall_on(connection: Any, marker: bytes, server: Any, seconds: float) -> None:
    """The next request on `connection` that holds `marker` stalls `server` (SIGSTOP) for
    `seconds` just before it goes: its reply comes late."""
    send = connection.send_packed_command

    def sending(packed: Any, *args: Any, **kwargs: Any) -> Any:
        parts = packed if isinstance(packed, list) else [packed]
        if any(marker in bytes(part) for part in parts):
            del connection.send_packed_command  # once
            os.kill(server.pid, signal.SIGSTOP)
            threading.Timer(seconds, os.kill, (server.pid, signal.SIGCONT)).start()
        return send(packed, *args, **kwargs)

    connection.send_packed_command = sending


def test_a_script_load_that_timed_out_on_a_held_connection_leaves_no_late_reply(servers):
    """After NOSCRIPT (a restart, a failover) a script is loaded again on the thread's own
    connection. That load went through redis-py's own call, where a send's timeout is not
    retried and nothing closed the Sentinel connection: its late reply stayed unread, and
    every call after it read the one before (a send returned its predecessor's reply)."""
    master = servers.start()
    servers.start(replica_of=master)
    with Sentinels(master) as sentinels:
        held = connect(sentinels.url, socket_timeout=0.3).client()
        connection = held.connection
        script = SyncScript(held, "return ARGV[1]")
        assert script.on_connection(held, [], ["loaded"]) == b"loaded"
        for load in (
            lambda: script.on_connection(held, [], ["one"]),  # a send's own load
            lambda: Scripts(held).load("woken", held),  # a fetch thread's
        ):
            master.client().script_flush()
            stall_on(connection, b"SCRIPT", master, 0.6)
            with pytest.raises(redis.TimeoutError), no_resend_on_timeout():
                load()
            time.sleep(0.8)  # the late reply arrives
            assert script.on_connection(held, [], ["two"]) == b"two"
            assert round_trip(connection, [("ECHO", "three")]) == [b"three"]
        held.close()


def test_a_held_connection_checked_for_health_asks_sentinel_where_the_master_is(servers):
    """A connection idle for longer than its health-check interval is checked with a PING
    before its next command; when that PING failed, redis-py connected it again to the
    address it had, without asking Sentinel: after a failover with the old master back at
    its address (and not yet made a replica), a send was stored on the old master, whose
    data the new master's would then replace."""
    master = servers.start()
    replica = servers.start(replica_of=master)
    with Sentinels(master) as sentinels:
        client = Client(sentinels.url, send_timeout=10)
        client.create_topic("health", queues=1)
        client.send_message("health", b"before")
        broker = client.router.queue_broker(client.topic("health"), 0)
        connection = broker.sender().connection
        connection.next_health_check = 0  # due: the next send checks it first

        master.kill()
        assert wait_for(lambda: sentinels.master_address() == ("127.0.0.1", replica.port), 20)
        master.restart()  # at its old address, a master until Sentinel turns it
        client.send_message("health", b"after")
        stream = client.router.queue_keys("health", 0).stream
        assert [f[b"body"] for _, f in replica.client().xrange(stream)][-1:] == [b"after"]
        client.close()
