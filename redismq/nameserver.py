"""The NameServer: checks every broker (master and replicas) every second, records their
health in the meta Redis and bumps the route version when something clients need changes.
Several may run; a lease makes one act at a time."""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import time
from typing import TYPE_CHECKING, Any

import redis
from redis.exceptions import RedisClusterException

from .brokers import BrokerInfo, list_brokers
from .cluster import topology
from .errors import RedisMQError
from .process import StopEvent, process_id
from .routing import routes_changed
from .urls import connect, is_cluster_url, mask_url

if TYPE_CHECKING:
    from .client import Client

log = logging.getLogger("redismq.nameserver")
CHECK_TIMEOUT = 1.0
_numbers = itertools.count(1)


def check_server(conn: redis.Redis) -> dict[str, Any]:
    """Up, role, replication offset and (for a replica) link state of one server."""
    try:
        info = conn.info("replication")
    except redis.RedisError as exc:
        return {"up": False, "error": str(exc)}
    out: dict[str, Any] = {"up": True, "role": info.get("role")}
    if info.get("role") == "master":
        out["offset"] = info.get("master_repl_offset", 0)
        out["replicas"] = info.get("connected_slaves", 0)
    else:
        out["offset"] = info.get("slave_repl_offset", 0)
        out["link"] = info.get("master_link_status")
        out["master"] = f"{info.get('master_host')}:{info.get('master_port')}"
    return out


def check_cluster(conn: Any) -> dict[str, Any]:
    """Health of a Redis Cluster broker: up when the cluster answers with its slot map;
    `address` lists its masters now (a failover changes it), `masters` their slots and
    replicas. The failover itself is the cluster's."""
    try:
        masters = topology(conn)
    except (redis.RedisError, RedisClusterException) as exc:
        return {"up": False, "checked": time.time(), "master": {"up": False, "error": str(exc)}}
    return {
        "up": bool(masters),
        "checked": time.time(),
        "master": {"up": True, "role": "cluster"},
        "address": ",".join(m["node"] for m in masters),
        "masters": masters,
        "replicas": [],
    }


class NameServer:
    """Keeps broker health and routes fresh; `run()` until `stop()`."""

    def __init__(self, client: Client, interval: float = 1.0) -> None:
        self.client = client
        self.interval = interval
        # unique per instance, so that two NameServers in one process do not share a lease
        self.id = f"{process_id()}:{next(_numbers)}"
        self.lease_ms = int(max(3.0, interval * 3) * 1000)
        self.acting = False
        self._conns: dict[str, redis.Redis] = {}
        self._last: dict[str, tuple] = {}
        self.stopping = StopEvent()  # set by the command's signal handlers

    def run(self) -> None:
        """Check brokers every interval while holding the lease."""
        while not self.stopping.is_set():
            started = time.monotonic()
            try:
                self.acting = self.acquire()
                if self.acting:
                    self.check_all()
            except (redis.RedisError, RedisMQError) as exc:
                self.acting = False
                log.error("meta Redis unavailable: %s", exc)
            self.stopping.wait(max(0.0, self.interval - (time.monotonic() - started)))
        self.release()

    def stop(self) -> None:
        self.stopping.set()

    def acquire(self) -> bool:
        """Take or keep the lease; True while this NameServer is the acting one."""
        held = self._lease("take", self.lease_ms)
        if held and not self.acting:
            log.info("nameserver %s is now acting", self.id)
        if not held and self.acting:
            log.warning("nameserver %s lost its lease; standing by", self.id)
        return held

    def release(self) -> None:
        """Give up the lease (if still ours), so that a standby takes over at once."""
        with contextlib.suppress(redis.RedisError):
            self._lease("give", 0)
        self.acting = False

    def _lease(self, action: str, ttl_ms: int) -> bool:
        """Take, renew or give back the lease only while no other NameServer holds it
        (lease.lua: a GET then SET/DEL could act on a lease another one took meanwhile)."""
        key = self.client.router.keys.nameserver_lease
        scripts = self.client.router.meta_scripts
        return bool(scripts.lease(keys=[key], args=[action, self.id, ttl_ms]))

    def check_all(self) -> dict[str, dict[str, Any]]:
        """Check every broker once, store the results, bump routes on a change."""
        keys = self.client.router.keys
        results = {b.name: self.check_broker(b) for b in list_brokers(self.client)}
        changed = False
        pipe = self.client.meta.pipeline(transaction=True)
        for name, health in results.items():
            pipe.hset(keys.broker_health, name, json.dumps(health))
            summary = (health["up"], health.get("address"))
            if self._last.get(name) not in (None, summary):
                log.warning("broker %s changed: %s -> %s", name, self._last[name], summary)
                changed = True
            self._last[name] = summary
        if changed:
            routes_changed(pipe, keys)
        pipe.execute()
        return results

    def check_broker(self, broker: BrokerInfo) -> dict[str, Any]:
        """Health of one broker: its master (followed through Sentinel) and replicas; for a
        Redis Cluster, its masters and their replicas as the cluster reports them."""
        if is_cluster_url(broker.url):
            return check_cluster(self._conn(broker.url))
        master = check_server(self._conn(broker.url))
        health: dict[str, Any] = {"up": master["up"], "checked": time.time(), "master": master}
        if master["up"]:
            try:
                health["address"] = self._address(broker.url)
            except redis.RedisError as exc:  # e.g. every Sentinel stopped answering meanwhile
                health.update(up=False, master={"up": False, "error": str(exc)})
        replicas = []
        for url in broker.replicas:
            state = check_server(self._conn(url))
            if master["up"] and state["up"]:
                state["lag"] = max(0, master.get("offset", 0) - state.get("offset", 0))
            replicas.append({"url": mask_url(url), **state})
        health["replicas"] = replicas
        return health

    def _conn(self, url: str) -> redis.Redis:
        if url not in self._conns:
            self._conns[url] = connect(url, socket_timeout=CHECK_TIMEOUT)
        return self._conns[url]

    def _address(self, url: str) -> str:
        """host:port of the server now answering as the broker's master."""
        conn = self._conns[url]
        pool = conn.connection_pool
        if hasattr(pool, "get_master_address"):  # Sentinel: the master it follows now
            host, port = pool.get_master_address()
            return f"{host}:{port}"
        kw = pool.connection_kwargs
        return f"{kw.get('host')}:{kw.get('port')}"
