"""Sends per second into one topic spread over 1, 2 and 3 local brokers, in one run.

    python -m examples.broker_scaling [--messages 20000]

Every broker is a real local server (redismq.server.LocalServer) on this machine, so the
brokers share its cores with the producer: the figures show what spreading costs and
gains here, not what separate hosts would give.
"""

from __future__ import annotations

import argparse
import time
from contextlib import ExitStack

from redismq import Client
from redismq.brokers import add_broker
from redismq.server import LocalServer


def measure(brokers: int, messages: int) -> dict[str, float]:
    """Sends/s one by one and with send_many, into a 12-queue topic over `brokers`."""
    with ExitStack() as stack:
        meta = stack.enter_context(LocalServer())
        client = Client(meta.url)
        for i in range(brokers):
            add_broker(client, f"b{i}", stack.enter_context(LocalServer()).url)
        client.create_topic("scale", queues=12)
        one = messages // 10
        started = time.perf_counter()
        for n in range(one):
            client.send("scale", {"n": n})
        single = one / (time.perf_counter() - started)
        started = time.perf_counter()
        for start in range(0, messages, 500):
            client.send_many("scale", [{"n": n} for n in range(start, start + 500)])
        batched = messages / (time.perf_counter() - started)
        placement = client.topic("scale").placement
        return {
            "brokers": brokers,
            "send/s": single,
            "send_many/s": batched,
            "queues per broker": max(placement.count(f"b{i}") for i in range(brokers)),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000)
    args = parser.parse_args()
    print(f"{'brokers':>8} {'send/s':>10} {'send_many/s':>12} {'max queues/broker':>18}")
    for brokers in (1, 2, 3):
        row = measure(brokers, args.messages)
        print(
            f"{row['brokers']:>8} {row['send/s']:>10,.0f} {row['send_many/s']:>12,.0f} "
            f"{row['queues per broker']:>18}"
        )


if __name__ == "__main__":
    main()
