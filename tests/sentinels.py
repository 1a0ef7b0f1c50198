"""Real servers for the broker tests: a set of LocalServers stopped together, and real Redis
Sentinels started from the same server binary as LocalServer (``redis-server`` or
``valkey-server`` with ``--sentinel``), each with its own config file in a private directory,
on free loopback ports; `stop()` kills every one of them."""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from redismq.process import die_with_parent
from redismq.server import LocalServer, find_server_binary

MASTER_NAME = "mymaster"


class Servers:
    """LocalServers started for one test; `stop_all()` stops every one (replicas first)."""

    def __init__(self) -> None:
        self.started: list[LocalServer] = []

    def start(self, **options: object) -> LocalServer:
        server = LocalServer(**options)  # type: ignore[arg-type]
        self.started.append(server)
        return server.start()

    def stop_all(self) -> None:
        for server in reversed(self.started):
            with contextlib.suppress(Exception):
                server.stop()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _preexec() -> None:
    die_with_parent(signal.SIGKILL)


class Sentinels:
    """`count` Sentinels monitoring one master as `MASTER_NAME` (quorum 2), with a fast
    failure detection (down after 1 s)."""

    def __init__(self, master: LocalServer, count: int = 3, down_after_ms: int = 1000) -> None:
        self.master = master
        self.count = count
        self.down_after_ms = down_after_ms
        self.ports: list[int] = []
        self.procs: list[subprocess.Popen] = []
        self.dir = Path(tempfile.mkdtemp(prefix="redismq-sentinels-"))

    @property
    def url(self) -> str:
        """The broker URL that follows this master through the Sentinels."""
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.ports)
        return f"sentinel://{hosts}/{MASTER_NAME}"

    def _config(self, port: int) -> Path:
        path = self.dir / f"sentinel-{port}.conf"
        lines = [
            f"port {port}",
            "bind 127.0.0.1",
            "daemonize no",
            f"dir {self.dir}",
            f"sentinel monitor {MASTER_NAME} 127.0.0.1 {self.master.port} 2",
            f"sentinel down-after-milliseconds {MASTER_NAME} {self.down_after_ms}",
            f"sentinel failover-timeout {MASTER_NAME} 5000",
            f"sentinel parallel-syncs {MASTER_NAME} 1",
        ]
        if self.master.password:
            lines.append(f"sentinel auth-pass {MASTER_NAME} {self.master.password}")
        path.write_text("\n".join(lines) + "\n")
        return path

    def start(self, timeout: float = 30.0) -> Sentinels:
        """Start the Sentinels; return once each knows the others and the master's replicas."""
        binary = find_server_binary()
        try:
            for _ in range(self.count):
                port = _free_port()
                config = self._config(port)
                log = open(self.dir / f"sentinel-{port}.log", "ab")  # noqa: SIM115
                with log:
                    self.procs.append(
                        subprocess.Popen(
                            [binary, str(config), "--sentinel"],
                            stdin=subprocess.DEVNULL,
                            stdout=log,
                            stderr=subprocess.STDOUT,
                            cwd=self.dir,
                            start_new_session=True,
                            preexec_fn=_preexec,
                        )
                    )
                self.ports.append(port)
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def client(self, port: int) -> redis.Redis:
        return redis.Redis(
            host="127.0.0.1", port=port, socket_timeout=1.0, socket_connect_timeout=1.0
        )

    def wait_ready(self, timeout: float) -> None:
        """Until every Sentinel sees the master, the other Sentinels and at least one
        replica (failover needs all three)."""
        deadline = time.monotonic() + timeout
        for port in self.ports:
            conn = self.client(port)
            try:
                while True:
                    try:
                        others = conn.sentinel_sentinels(MASTER_NAME)
                        replicas = conn.sentinel_slaves(MASTER_NAME)
                        if len(others) >= self.count - 1 and replicas:
                            break
                    except redis.RedisError:
                        pass
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"sentinels not ready; logs in {self.dir}")
                    time.sleep(0.1)
            finally:
                conn.close()

    def master_address(self) -> tuple[str, int] | None:
        """The master the first answering Sentinel names now."""
        for port in self.ports:
            conn = self.client(port)
            try:
                host, master_port = conn.sentinel_get_master_addr_by_name(MASTER_NAME)
                return (host.decode() if isinstance(host, bytes) else host), int(master_port)
            except (redis.RedisError, TypeError):
                continue
            finally:
                conn.close()
        return None

    def stop(self) -> None:
        """Kill every Sentinel and remove their directory."""
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
            proc.wait(10)
        self.procs.clear()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Sentinels:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
