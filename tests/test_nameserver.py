"""The NameServer: health of every broker master and replica, route version bumps, one
acting NameServer at a time (lease) with takeover, and the `redismq nameserver` command."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator

import pytest
from conftest import code_after_sigterm, fill_pipe, unread_pipe, wait_for
from sentinels import Servers

from redismq import Client
from redismq.brokers import add_broker
from redismq.nameserver import NameServer


@pytest.fixture
def servers() -> Iterator[Servers]:
    started = Servers()
    yield started
    started.stop_all()


class CountingNameServer(NameServer):
    """A NameServer that counts its check rounds."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.rounds = 0

    def check_all(self):
        self.rounds += 1
        return super().check_all()


class Running:
    """NameServers running in threads; every one stopped at the end."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.threads: list[tuple[NameServer, threading.Thread]] = []

    def start(self, interval: float = 0.2) -> CountingNameServer:
        ns = CountingNameServer(Client(self.url), interval=interval)
        thread = threading.Thread(target=ns.run, daemon=True)
        thread.start()
        self.threads.append((ns, thread))
        return ns

    def stop(self, ns: NameServer) -> None:
        for other, thread in self.threads:
            if other is ns:
                ns.stop()
                thread.join(10)
                assert not thread.is_alive()

    def stop_all(self) -> None:
        for ns, thread in self.threads:
            ns.stop()
            thread.join(10)
            ns.client.close()


@pytest.fixture
def running(url: str) -> Iterator[Running]:
    r = Running(url)
    yield r
    r.stop_all()


def version(client: Client) -> int:
    return int(client.meta.get(client.router.keys.routes_version) or 0)


def stored_health(client: Client, name: str) -> dict:
    raw = client.meta.hget(client.router.keys.broker_health, name)
    return json.loads(raw) if raw else {}


# -- health ----------------------------------------------------------------------------
def test_health_records_up_down_role_offsets_and_replica_lag(client, url, servers):
    master = servers.start()
    replica = servers.start(replica_of=master)
    add_broker(client, "b", master.url, [replica.url])
    ns = NameServer(Client(url), interval=0.2)

    health = ns.check_all()["b"]

    assert health == stored_health(client, "b")
    assert health["up"] is True and health["address"] == f"127.0.0.1:{master.port}"
    assert health["master"]["role"] == "master" and health["master"]["replicas"] == 1
    [r] = health["replicas"]
    assert r["up"] is True and r["role"] == "slave" and r["link"] == "up"
    assert r["master"] == f"127.0.0.1:{master.port}"
    assert r["url"] == replica.url and r["lag"] >= 0

    writer = master.client()
    for i in range(200):
        writer.set(f"k{i}", "x" * 100)
    master_offset = writer.info("replication")["master_repl_offset"]
    writer.close()
    assert wait_for(lambda: ns.check_all()["b"]["replicas"][0]["lag"] == 0, timeout=10)
    assert ns.check_all()["b"]["master"]["offset"] >= master_offset

    routes = version(client)
    replica.kill()
    health = ns.check_all()["b"]
    assert health["up"] is True and health["replicas"][0]["up"] is False
    assert "lag" not in health["replicas"][0]
    assert version(client) == routes  # clients need nothing new: the master is unchanged
    assert client.router.states()["b"] == "active"

    master.kill()
    health = ns.check_all()["b"]
    assert health["up"] is False and health["master"]["up"] is False
    assert "error" in health["master"]
    assert version(client) == routes + 1  # the broker went down: clients re-read routes
    assert client.router.states()["b"] == "down"

    master.restart()
    assert ns.check_all()["b"]["up"] is True
    assert version(client) == routes + 2
    assert client.router.states()["b"] == "active"


# -- the lease -------------------------------------------------------------------------
def test_only_one_of_two_nameservers_acts_and_the_other_takes_over(client, url, servers, running):
    add_broker(client, "b", servers.start().url)
    first, second = running.start(), running.start()
    assert wait_for(lambda: first.acting or second.acting, timeout=10)
    acting, standby = (first, second) if first.acting else (second, first)

    for _ in range(10):  # a second of rounds: one acts, the other only waits
        time.sleep(0.1)
        assert acting.acting and not standby.acting
    assert acting.rounds >= 3 and standby.rounds == 0
    lease = client.router.keys.nameserver_lease
    assert client.meta.get(lease).decode() == acting.id

    running.stop(acting)  # a clean stop gives the lease up
    assert (client.meta.get(lease) or b"").decode() != acting.id  # gone, or the standby's

    assert wait_for(lambda: standby.acting, timeout=3 * acting.lease_ms / 1000)
    assert client.meta.get(lease).decode() == standby.id
    took_over = standby.rounds
    assert wait_for(lambda: standby.rounds > took_over + 2, timeout=5)


def test_a_crashed_nameservers_lease_lapses_and_another_takes_over(
    client, url, servers, running, monkeypatch
):
    add_broker(client, "b", servers.start().url)
    crashing = running.start()
    assert wait_for(lambda: crashing.acting, timeout=10)
    standby = running.start()
    monkeypatch.setattr(crashing, "release", lambda: None)  # dies without giving it up

    running.stop(crashing)
    checked = stored_health(client, "b")["checked"]

    assert not standby.acting
    assert wait_for(lambda: standby.acting, timeout=3 * crashing.lease_ms / 1000)
    assert wait_for(lambda: stored_health(client, "b")["checked"] > checked, timeout=5)


def test_nameserver_keeps_running_while_the_meta_redis_is_away(servers):
    meta = servers.start()
    runner = Running(meta.url)
    try:
        ns = runner.start()
        assert wait_for(lambda: ns.acting, timeout=10)
        meta.kill()
        assert wait_for(lambda: not ns.acting, timeout=10)
        meta.restart()
        assert wait_for(lambda: ns.acting, timeout=15)
        assert all(t.is_alive() for _, t in runner.threads)
    finally:
        runner.stop_all()


# -- the command -----------------------------------------------------------------------
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_nameserver_command_checks_brokers_until_a_signal(client, url, servers, processes, signum):
    master = servers.start(password="s3cret")
    add_broker(client, "b", master.url)
    proc = processes.start("nameserver", "--url", url, "--interval", "0.2")

    assert wait_for(lambda: stored_health(client, "b").get("up") is True, timeout=15)
    master.kill()
    assert wait_for(lambda: stored_health(client, "b").get("up") is False, timeout=15)
    proc.send_signal(signum)

    assert proc.wait(15) == 0
    output = proc.stdout.read()
    assert "Traceback" not in output and "s3cret" not in output, output
    assert client.meta.get(client.router.keys.nameserver_lease) is None  # given up


def test_nameserver_command_stops_though_nobody_reads_its_log(client, url, servers, processes):
    """With its log a full pipe and a line waiting for it (a broker went down), the stopped
    nameserver waited at its exit for that write, for good."""
    master = servers.start()
    add_broker(client, "b", master.url)
    with unread_pipe() as log:
        proc = processes.start("nameserver", "--url", url, "--interval", "0.2", stdout=log)
        assert wait_for(lambda: stored_health(client, "b").get("up") is True, timeout=15)
        fill_pipe(log)
        master.kill()
        assert wait_for(lambda: stored_health(client, "b").get("up") is False, timeout=15)
        time.sleep(0.5)  # its "broker changed" line, waiting on the pipe
        code = code_after_sigterm(proc, 20)
    assert code == 0


def test_nameserver_command_with_an_unreachable_meta_is_one_error(processes):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = processes.start(
        "nameserver", "--url", f"redis://:pw@127.0.0.1:{port}/0", stdin=subprocess.DEVNULL
    )
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1, output
    assert output.startswith("error:") and output.strip().count("\n") == 0, output
    assert "pw@" not in output
