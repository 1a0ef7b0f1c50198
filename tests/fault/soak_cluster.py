"""The soak's cluster: the servers (a meta Redis, 2 brokers each a master + a replica watched
by 3 Sentinels), the NameServer and the worker supervisors it starts, and how it finds and
stops their processes (tests/fault/soak.py)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from redismq import Client
from redismq.brokers import add_broker
from redismq.process import die_with_parent
from redismq.server import LocalServer
from tests.apps import soak_app
from tests.sentinels import Sentinels, Servers

if TYPE_CHECKING:
    from tests.fault.soak import Config

ROOT = Path(__file__).resolve().parents[2]  # where the processes run (cwd, PYTHONPATH)
APP = "tests.apps.soak_app:app"
BROKERS = ("b0", "b1")
SENTINEL_DOWN_AFTER_MS = 3000  # how long the Sentinels wait before they call a master down


# -- processes -------------------------------------------------------------------------
def spawn_children(pid: int) -> list[int]:
    """The multiprocessing (spawn) children of a worker supervisor."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == pid and b"spawn_main" in Path(f"/proc/{entry}/cmdline").read_bytes():
                found.append(int(entry))
        except (OSError, ValueError, IndexError):
            continue
    return found


def is_worker_process(pid: int) -> bool:
    try:
        return b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


class Cluster:
    """Every server and process of one soak; `stop()` stops all of them (idempotent)."""

    def __init__(self, config: Config, workdir: Path, db: Path) -> None:
        self.config = config
        self.workdir = workdir
        self.db = db
        self.servers = Servers()
        self.meta: LocalServer | None = None
        self.nodes: dict[str, tuple[LocalServer, LocalServer]] = {}
        self.sentinels: dict[str, Sentinels] = {}
        self.supervisors: list[subprocess.Popen] = []
        self.retired: set[int] = set()  # supervisors told to stop
        self.nameserver: subprocess.Popen | None = None
        # Processes are started from this one long-lived thread: PR_SET_PDEATHSIG fires when
        # the thread that forked a child exits, and faults start workers from their thread.
        self._spawner = ThreadPoolExecutor(1, thread_name_prefix="soak-spawner")
        self._lock = threading.Lock()

    @property
    def meta_url(self) -> str:
        assert self.meta is not None
        return self.meta.url

    def start_servers(self) -> None:
        self.meta = self.servers.start()
        client = Client(self.meta.url)
        try:
            for name in BROKERS:
                master = self.servers.start()
                replica = self.servers.start(replica_of=master)
                self.nodes[name] = (master, replica)
                # Not the tests' usual 1 s: on a loaded 2-core machine a freshly promoted
                # master can miss the Sentinels' pings for a second, and they failed it over
                # again, back to the old master before it had synced (1 run in 6 or so):
                # a second failover, which loses what the new master stored meanwhile.
                self.sentinels[name] = Sentinels(master, down_after_ms=SENTINEL_DOWN_AFTER_MS)
                self.sentinels[name].start()
                add_broker(client, name, self.sentinels[name].url)
        finally:
            client.close()

    def master(self, name: str) -> LocalServer:
        """The server Sentinel names as the broker's master now."""
        address = self.sentinels[name].master_address()
        for server in self.nodes[name]:
            if address == (server.host, server.port):
                return server
        raise RuntimeError(f"broker {name}: Sentinel names {address}, not one of ours")

    def replica(self, name: str) -> LocalServer:
        master = self.master(name)
        return next(s for s in self.nodes[name] if s is not master)

    def _popen(self, args: list[str], log_name: str, env: dict[str, str]) -> subprocess.Popen:
        parent = os.getpid()

        def start() -> subprocess.Popen:
            with open(self.workdir / log_name, "ab") as log:
                return subprocess.Popen(
                    args,
                    cwd=ROOT,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    preexec_fn=lambda: die_with_parent(signal.SIGTERM, parent),
                )

        return self._spawner.submit(start).result()

    def _env(self) -> dict[str, str]:
        path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
        return {**os.environ, "PYTHONPATH": path, soak_app.ENV_DB: str(self.db)}

    def start_nameserver(self) -> None:
        args = [sys.executable, "-m", "redismq.cli.main", "nameserver", "--url", self.meta_url]
        args += ["--interval", "0.5", "--log-level", "WARNING"]
        self.nameserver = self._popen(args, "nameserver.log", self._env())

    def start_worker(self) -> subprocess.Popen:
        c = self.config
        args = [sys.executable, "-m", "redismq.cli.main", "worker", APP, "--url", self.meta_url]
        args += ["--processes", str(c.processes), "--concurrency", str(c.concurrency)]
        args += ["--visibility-timeout", str(c.visibility_timeout), "--grace", str(c.grace)]
        args += ["--log-level", "WARNING"]
        with self._lock:
            n = len(self.supervisors)
        proc = self._popen(args, f"worker-{n}.log", self._env())
        with self._lock:
            self.supervisors.append(proc)
        return proc

    def live_supervisors(self) -> list[subprocess.Popen]:
        with self._lock:
            return [p for p in self.supervisors if p.poll() is None and p.pid not in self.retired]

    def stop_supervisor(self, proc: subprocess.Popen, timeout: float) -> int | None:
        """SIGTERM a worker supervisor; SIGKILL it and its children if it is not gone in time."""
        with self._lock:
            self.retired.add(proc.pid)
        children = spawn_children(proc.pid)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for pid in children:
            if is_worker_process(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        return proc.returncode

    def stop_workers(self) -> None:
        procs = [p for p in self.supervisors if p.poll() is None]
        threads = [
            threading.Thread(target=self.stop_supervisor, args=(p, self.config.grace + 10))
            for p in procs
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def stop(self) -> None:
        """Stop every worker, the NameServer, the Sentinels and the servers."""
        with contextlib.suppress(Exception):
            self.stop_workers()
        if self.nameserver is not None and self.nameserver.poll() is None:
            self.nameserver.send_signal(signal.SIGTERM)
            try:
                self.nameserver.wait(10)
            except subprocess.TimeoutExpired:
                self.nameserver.kill()
                self.nameserver.wait()
        for sentinels in self.sentinels.values():
            with contextlib.suppress(Exception):
                sentinels.stop()
        self.servers.stop_all()
        self._spawner.shutdown(wait=True)
