"""A real local Redis Cluster for tests, benchmarks and the demo.

`LocalCluster` starts ``masters`` × (1 + ``replicas``) `LocalServer` processes with
``--cluster-enabled yes`` and joins them from Python (CLUSTER ADDSLOTSRANGE, MEET,
REPLICATE), so it needs no ``redis-cli`` and works with both Redis and Valkey binaries.
"""

from __future__ import annotations

import contextlib
import time
from types import TracebackType
from typing import Any

import redis

from .server import _PORT_ATTEMPTS, LocalServer, ServerError, _AddressInUse, _free_port

SLOTS = 16384
# Short, so that a killed master's replica takes over within seconds.
NODE_TIMEOUT_MS = 1000


class LocalCluster:
    """A local Redis Cluster of `masters` masters, each with `replicas` replicas.

    Use as a context manager, or call `start()` and `stop()`. `url` is the
    ``cluster://`` URL of the seed nodes (every master).
    """

    def __init__(
        self,
        masters: int = 3,
        replicas: int = 1,
        *,
        binary: str | None = None,
        node_timeout_ms: int = NODE_TIMEOUT_MS,
        persistence: bool = False,
    ) -> None:
        if masters < 1 or replicas < 0:
            raise ServerError("a cluster needs at least one master")
        args = [
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            str(node_timeout_ms),
            "--cluster-replica-validity-factor",
            "0",
            "--cluster-require-full-coverage",
            "no",
            # CLUSTER SLOTS lists a replica once its replication offset is above 0, which
            # on an empty master takes its first ping to the replicas (every 10 s by default)
            "--repl-ping-replica-period",
            "1",
        ]
        self.node_timeout_ms = node_timeout_ms

        self.bus_ports: dict[int, int] = {}

        def node() -> LocalServer:
            # the cluster bus port is given, not derived (+10000 fails for high free ports)
            port, bus = _free_port(), _free_port()
            self.bus_ports[port] = bus
            extra = [*args, "--cluster-port", str(bus)]
            return LocalServer(binary, port=port, persistence=persistence, extra_args=extra)

        self._node = node
        self.masters = [node() for _ in range(masters)]
        self.replicas = [[node() for _ in range(replicas)] for _ in range(masters)]

    @property
    def nodes(self) -> list[LocalServer]:
        """Every server of the cluster (masters first, as started)."""
        return self.masters + [r for rs in self.replicas for r in rs]

    @property
    def url(self) -> str:
        """The ``cluster://`` URL naming every first master as a seed node."""
        return "cluster://" + ",".join(f"{s.host}:{s.port}" for s in self.masters)

    def start(self) -> LocalCluster:
        """Start every node, assign slots, join them, and wait until the cluster is ok."""
        try:
            for group in (self.masters, *self.replicas):
                for i, node in enumerate(group):
                    group[i] = self._started(node)
            self._join()
        except BaseException:
            self.stop()
            raise
        return self

    def _started(self, node: LocalServer) -> LocalServer:
        """The node, started; if another process took its ports since they were chosen
        (they are fixed: a node restarts on its own), a new node on fresh ones."""
        for _ in range(_PORT_ATTEMPTS):
            try:
                return node.start()
            except _AddressInUse:
                del self.bus_ports[node.port]
                node = self._node()
        return node.start()

    def stop(self) -> None:
        """Stop every node (idempotent)."""
        for node in self.nodes:
            with contextlib.suppress(Exception):
                node.stop()

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- inspection -------------------------------------------------------------------

    def node_for(self, port: int) -> LocalServer:
        """The server listening on this port."""
        return next(s for s in self.nodes if s.port == port)

    def current_masters(self) -> list[LocalServer]:
        """The running servers that are masters now (after failovers too)."""
        out = []
        for node in self.nodes:
            if not node.running:
                continue
            with contextlib.suppress(redis.RedisError), _conn(node) as r:
                if r.info("replication").get("role") == "master":
                    out.append(node)
        return out

    def master_of_slot(self, slot: int) -> LocalServer:
        """The running server that serves this slot now."""
        for node in self.current_masters():
            with _conn(node) as r:
                for start, end, *_ in r.execute_command("CLUSTER", "SLOTS"):
                    if start <= slot <= end:
                        (host, port, *_) = _[0]
                        return self.node_for(int(port))
        raise ServerError(f"no running master serves slot {slot}")

    def wait_ok(self, timeout: float = 30.0, replicas: int = 0) -> None:
        """Wait until every running node reports cluster_state:ok, serves every slot from a
        running master, and lists at least `replicas` replicas per master."""
        deadline = time.monotonic() + timeout
        while True:
            if self._ok(replicas):
                return
            if time.monotonic() > deadline:
                raise ServerError(f"the local cluster did not become ok within {timeout:g}s")
            time.sleep(0.1)

    def move_slot(self, slot: int, to: LocalServer) -> None:
        """Move one slot, with its keys, to another master (as `redis-cli --cluster
        reshard` does: IMPORTING/MIGRATING, MIGRATE the keys, SETSLOT NODE everywhere)."""
        src = self.master_of_slot(slot)
        if src is to:
            return
        with _conn(src) as s, _conn(to) as d:
            src_id = _text(s.execute_command("CLUSTER", "MYID"))
            dst_id = _text(d.execute_command("CLUSTER", "MYID"))
            d.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)
            s.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id)
            while keys := s.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100):
                s.execute_command("MIGRATE", to.host, to.port, "", 0, 5000, "KEYS", *keys)
            for node in self.current_masters():
                with _conn(node) as r:
                    r.execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)
        self.wait_ok()

    # -- internals ----------------------------------------------------------------------

    def _ok(self, replicas_wanted: int) -> bool:
        running = [n for n in self.nodes if n.running]
        try:
            for node in running:
                with _conn(node) as r:
                    info = r.execute_command("CLUSTER", "INFO")
                    if isinstance(info, bytes):
                        info = info.decode()
                    if "cluster_state:ok" not in info:
                        return False
                    slots = r.execute_command("CLUSTER", "SLOTS")
                    if sum(end - start + 1 for start, end, *_ in slots) != SLOTS:
                        return False
                    for _start, _end, master, *replicas in slots:
                        if int(master[1]) not in {n.port for n in running}:
                            return False
                        if len(replicas) < replicas_wanted:
                            return False
        except redis.RedisError:
            return False
        return True

    def _join(self) -> None:
        ids = {}
        for node in self.nodes:
            with _conn(node) as r:
                ids[node.port] = _text(r.execute_command("CLUSTER", "MYID"))
        share, extra = divmod(SLOTS, len(self.masters))
        start = 0
        for i, master in enumerate(self.masters):
            end = start + share + (1 if i < extra else 0) - 1
            with _conn(master) as r:
                r.execute_command("CLUSTER", "ADDSLOTSRANGE", start, end)
            start = end + 1
        first = self.masters[0]
        for node in self.nodes[1:]:
            with _conn(node) as r:
                r.execute_command(
                    "CLUSTER", "MEET", first.host, first.port, self.bus_ports[first.port]
                )
        self._wait(lambda: self._everyone_knows(len(self.nodes)), "the nodes to meet")
        for master, replicas in zip(self.masters, self.replicas, strict=True):
            for replica in replicas:
                with _conn(replica) as r:
                    r.execute_command("CLUSTER", "REPLICATE", ids[master.port])
        self.wait_ok(replicas=min((len(r) for r in self.replicas), default=0))
        for replicas in self.replicas:
            for replica in replicas:
                self._wait(lambda r=replica: _linked(r), "the replicas to sync")

    def _everyone_knows(self, count: int) -> bool:
        for node in self.nodes:
            with _conn(node) as r:
                lines = _text(r.execute_command("CLUSTER", "NODES")).strip().splitlines()
                if len(lines) < count or any("handshake" in line for line in lines):
                    return False
        return True

    @staticmethod
    def _wait(predicate: Any, what: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise ServerError(f"timed out waiting for {what}")
            time.sleep(0.05)


def _linked(node: LocalServer) -> bool:
    with _conn(node) as r:
        return r.info("replication").get("master_link_status") == "up"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@contextlib.contextmanager
def _conn(node: LocalServer) -> Any:
    r = node.client(socket_connect_timeout=1.0, socket_timeout=2.0)
    try:
        yield r
    finally:
        r.close()
