"""Tests of redismq.server against real redis-server/valkey-server processes."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from redismq.server import (
    ENV_SERVER_BIN,
    LocalServer,
    ServerError,
    ServerNotFound,
    find_server_binary,
)

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc")


def pid_alive(pid: int) -> bool:
    """Whether a process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return state not in ("Z", "X")


def wait_until(predicate, timeout: float = 5.0, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(("127.0.0.1", port))
        except ConnectionRefusedError:
            pass
        else:
            return False
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def run_child(code: str) -> subprocess.Popen[str]:
    """A python child process running `code`, with redismq importable."""
    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ, PYTHONPATH=str(root))
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=root,
        env=env,
    )


def read_pid_and_dir(child: subprocess.Popen[str]) -> tuple[int, Path]:
    """Read the "<server pid> <server dir>" line the child prints."""
    assert child.stdout is not None
    line = child.stdout.readline()
    if not line.strip():
        _, err = child.communicate(timeout=10)
        pytest.fail(f"child printed no pid: {err}")
    pid, workdir = line.split()
    return int(pid), Path(workdir)


def test_start_stop() -> None:
    server = LocalServer().start()
    try:
        assert server.running
        pid, port, workdir = server.pid, server.port, server.dir
        assert pid is not None and pid_alive(pid)
        assert workdir is not None and workdir.is_dir()
        assert server.url == f"redis://127.0.0.1:{port}/0"
        client = server.client()
        assert client.ping()
        assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
        assert client.config_get("appendonly") == {"appendonly": "no"}
        client.set("k", "v")
        assert redis.Redis.from_url(server.url).get("k") == b"v"
        client.close()
    finally:
        server.stop()
    assert not server.running
    assert not pid_alive(pid)
    assert port_is_free(port)
    assert not workdir.exists()
    server.stop()  # idempotent


def test_context_manager_and_password() -> None:
    with LocalServer(password="s3cr/et") as server:
        assert server.url == f"redis://:s3cr%2Fet@127.0.0.1:{server.port}/0"
        assert redis.Redis.from_url(server.url).ping()
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=server.port, retry=Retry(NoBackoff(), 0)).ping()
        pid = server.pid
    assert pid is not None and not pid_alive(pid)


def test_replica_follows_master() -> None:
    with (
        LocalServer(password="pw") as master,
        LocalServer(replica_of=master, password="pw") as replica,
    ):
        info = replica.client().info("replication")
        assert info["role"] == "slave"
        assert info["master_link_status"] == "up"
        assert info["master_port"] == master.port
        master.client().set("greeting", "hello")
        assert wait_until(lambda: replica.client().get("greeting") == b"hello")


def test_restart_with_persistence_keeps_data() -> None:
    server = LocalServer(persistence=True).start()
    try:
        port, first_pid = server.port, server.pid
        server.client().set("kept", "1")
        server.restart()
        assert server.port == port
        assert server.pid != first_pid
        assert server.client().get("kept") == b"1"

        # a hard kill loses at most the last second; the directory survives kill()
        server.client().set("after-kill", "2")
        time.sleep(1.2)
        killed_pid = server.pid
        server.kill()
        assert not server.running
        assert killed_pid is not None and not pid_alive(killed_pid)
        server.restart()
        assert server.port == port
        assert server.client().get("kept") == b"1"
        assert server.client().get("after-kill") == b"2"
    finally:
        server.stop()


def test_restart_without_persistence_loses_data(tmp_path: Path) -> None:
    with LocalServer(dir=tmp_path) as server:
        server.client().set("lost", "1")
        server.restart()
        assert server.client().get("lost") is None
    assert (tmp_path / "server.log").exists()  # a given dir is kept


def test_find_server_binary_honours_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(ENV_SERVER_BIN, raising=False)
    real = find_server_binary()
    assert os.access(real, os.X_OK)

    monkeypatch.setenv(ENV_SERVER_BIN, real)
    assert find_server_binary() == os.path.abspath(real)

    missing = tmp_path / "no-such-redis-server"
    monkeypatch.setenv(ENV_SERVER_BIN, str(missing))
    with pytest.raises(ServerNotFound, match="does not exist"):
        find_server_binary()
    with pytest.raises(ServerNotFound):
        LocalServer().start()

    not_executable = tmp_path / "redis-server"
    not_executable.write_text("")
    monkeypatch.setenv(ENV_SERVER_BIN, str(not_executable))
    with pytest.raises(ServerNotFound, match="not executable"):
        find_server_binary()


def test_startup_failure_reports_log() -> None:
    server = LocalServer(extra_args=["--no-such-directive", "1"])
    with pytest.raises(ServerError, match="(?i)no-such-directive") as info:
        server.start()
    assert "exited with code" in str(info.value)
    assert not server.running
    assert server.dir is None  # the private directory was removed


def test_server_started_in_short_lived_thread_survives_it() -> None:
    servers: list[LocalServer] = []
    thread = threading.Thread(target=lambda: servers.append(LocalServer().start()))
    thread.start()
    thread.join()
    server = servers[0]
    try:
        time.sleep(0.3)
        assert server.running
        assert server.client().ping()
    finally:
        server.stop()


@linux_only
def test_server_dies_with_sigkilled_parent() -> None:
    child = run_child(
        """
        import time
        from redismq.server import LocalServer
        server = LocalServer().start()
        print(server.pid, server.dir, flush=True)
        time.sleep(60)
        """
    )
    server_pid = None
    workdir = None
    try:
        server_pid, workdir = read_pid_and_dir(child)
        assert pid_alive(server_pid)
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
        assert wait_until(lambda: not pid_alive(server_pid), timeout=5)
    finally:
        if child.poll() is None:
            child.kill()
        child.communicate()
        if server_pid is not None and pid_alive(server_pid):
            os.kill(server_pid, signal.SIGKILL)
        if workdir is not None:  # a SIGKILLed parent cannot clean up its directory
            shutil.rmtree(workdir, ignore_errors=True)


@linux_only
def test_server_stopped_at_normal_exit() -> None:
    child = run_child(
        """
        from redismq.server import LocalServer
        server = LocalServer().start()
        print(server.pid, server.dir, flush=True)
        """
    )
    assert child.stdout is not None
    out, err = child.communicate(timeout=30)
    assert child.returncode == 0, err
    pid_text, workdir = out.split()
    server_pid = int(pid_text)
    try:
        assert not pid_alive(server_pid)
        assert not Path(workdir).exists()
    finally:
        if pid_alive(server_pid):
            os.kill(server_pid, signal.SIGKILL)


def test_busy_port_is_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    import redismq.server as server_module

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        busy_port = busy.getsockname()[1]
        ports = iter([busy_port])
        real_free_port = server_module._free_port
        monkeypatch.setattr(
            server_module, "_free_port", lambda: next(ports, None) or real_free_port()
        )
        with LocalServer() as server:
            assert server.port != busy_port
            assert server.client().ping()

        with pytest.raises(ServerError, match="port in use"):
            LocalServer(port=busy_port).start()
