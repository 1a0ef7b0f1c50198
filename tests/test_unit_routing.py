"""Unit tests of redismq.routing: key → queue hashing and rendezvous placement."""

from __future__ import annotations

import os
import subprocess
import sys
import zlib
from collections import Counter
from pathlib import Path

import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st

from redismq.routing import Topic, queue_for_key, rendezvous

ROOT = Path(__file__).resolve().parent.parent

# Computed once with CRC-32 (zlib.crc32 of the UTF-8 key) and pinned: if these change,
# messages already queued by key would land on another queue than new ones (FIFO breaks).
PINNED = [
    ("user-1", 8, 4),
    ("user-2", 8, 6),
    ("order:42", 16, 11),
    ("", 4, 0),
    ("é", 4, 2),
    ("alice@example.com", 4, 1),
]


@pytest.mark.parametrize(("key", "queues", "expected"), PINNED)
def test_queue_for_key_pinned(key: str, queues: int, expected: int) -> None:
    assert queue_for_key(key, queues) == expected


def test_queue_for_key_is_crc32() -> None:
    # The CRC-32 check value: crc32(b"123456789") == 0xCBF43926.
    assert queue_for_key("123456789", 2**32) == 0xCBF43926
    assert queue_for_key("123456789", 7) == 0xCBF43926 % 7


@settings(max_examples=100, deadline=None, database=None)
@given(key=st.text(st.characters(codec="utf-8")), queues=st.integers(1, 1024))
def test_queue_for_key_in_range_and_deterministic(key: str, queues: int) -> None:
    q = queue_for_key(key, queues)
    assert 0 <= q < queues
    assert q == queue_for_key(key, queues)
    assert q == zlib.crc32(key.encode()) % queues


def test_one_queue_takes_every_key() -> None:
    assert {queue_for_key(f"k{i}", 1) for i in range(100)} == {0}


def test_queue_for_key_same_in_other_processes() -> None:
    code = (
        "from redismq.routing import queue_for_key\n"
        f"print([queue_for_key(k, q) for k, q, _ in {PINNED!r}])\n"
        "print(hash('user-1'))\n"
    )
    results = []
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(ROOT)}
        out = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        ).stdout.splitlines()
        results.append(out)
    expected = str([q for _, _, q in PINNED])
    assert results[0][0] == results[1][0] == expected
    # The two children really had different hash() values, so hash() would have been caught.
    assert results[0][1] != results[1][1]


@pytest.mark.parametrize("queues", [4, 8, 16])
def test_queue_for_key_spreads_evenly(queues: int) -> None:
    n = 20_000
    counts = Counter(queue_for_key(f"user-{i}", queues) for i in range(n))
    assert set(counts) == set(range(queues))
    mean = n / queues
    for c in counts.values():
        assert abs(c - mean) < 0.1 * mean, counts


def test_topic_round_robin() -> None:
    t = Topic(name="t", queues=3, retention=0, hard_cap=0)
    assert [t.next_queue() for _ in range(7)] == [0, 1, 2, 0, 1, 2, 0]


def test_a_batch_goes_round_robin_over_the_queues_of_usable_brokers() -> None:
    t = Topic(name="t", queues=3, retention=0, hard_cap=0, placement=["a", "b", "a"])
    assert t.next_queues(4, lambda broker: True) == [0, 1, 2, 0]
    assert t.next_queues(4, lambda broker: broker == "a") == [2, 0, 2, 0]
    assert t.next_queues(2) == [1, 2]


# -- rendezvous ------------------------------------------------------------------------------


def test_rendezvous_single_broker() -> None:
    assert rendezvous(["only"], "t#0") == "only"


def test_rendezvous_is_deterministic_and_order_free() -> None:
    brokers = ["a", "b", "c", "d"]
    for q in range(20):
        name = f"topic#{q}"
        assert rendezvous(brokers, name) == rendezvous(list(reversed(brokers)), name)
        assert rendezvous(brokers, name) in brokers


def test_rendezvous_three_brokers_twelve_queues_each_gets_some() -> None:
    placement = [rendezvous(["b1", "b2", "b3"], f"orders#{q}") for q in range(12)]
    assert set(placement) == {"b1", "b2", "b3"}


def test_rendezvous_pinned() -> None:
    # Computed once; stored routes don't depend on this, but new placements should not
    # silently change between versions.
    placement = [rendezvous(["a", "b", "c"], f"t#{q}") for q in range(12)]
    assert placement == ["c", "b", "a", "a", "b", "c", "c", "c", "a", "c", "b", "c"]


@settings(max_examples=60, deadline=None, database=None)
@given(
    brokers=st.lists(
        st.text("abcdefgh0123456789-", min_size=1, max_size=6),
        min_size=1,
        max_size=6,
        unique=True,
    ),
    new=st.text("ijklmnop", min_size=1, max_size=6),
    topic=st.text("xyz", min_size=1, max_size=4),
)
def test_rendezvous_adding_a_broker_moves_only_to_it(
    brokers: list[str], new: str, topic: str
) -> None:
    queues = [f"{topic}#{q}" for q in range(32)]
    before = {q: rendezvous(brokers, q) for q in queues}
    after = {q: rendezvous([*brokers, new], q) for q in queues}
    for q in queues:
        assert after[q] in (before[q], new), (q, before[q], after[q])


def test_rendezvous_adding_a_broker_moves_some_but_not_most() -> None:
    queues = [f"t#{q}" for q in range(300)]
    old = ["b1", "b2", "b3"]
    before = [rendezvous(old, q) for q in queues]
    after = [rendezvous([*old, "b4"], q) for q in queues]
    moved = [q for q, x, y in zip(queues, before, after, strict=True) if x != y]
    assert all(a == "b4" for a, b in zip(after, before, strict=True) if a != b)
    # About a quarter should move to the new broker.
    assert 0.15 * len(queues) < len(moved) < 0.35 * len(queues)


def test_rendezvous_removing_a_broker_moves_only_its_queues() -> None:
    queues = [f"t#{q}" for q in range(100)]
    full = ["b1", "b2", "b3", "b4"]
    before = {q: rendezvous(full, q) for q in queues}
    after = {q: rendezvous(["b1", "b2", "b4"], q) for q in queues}
    for q in queues:
        if before[q] != "b3":
            assert after[q] == before[q]


def test_rendezvous_spreads_evenly() -> None:
    counts = Counter(rendezvous(["b1", "b2", "b3", "b4"], f"t#{q}") for q in range(4000))
    for c in counts.values():
        assert 850 < c < 1150, counts


def test_rendezvous_no_brokers() -> None:
    with pytest.raises(ValueError):
        rendezvous([], "t#0")


def test_a_cluster_client_is_told_from_others_by_its_class() -> None:
    from redis.asyncio import Redis as AsyncRedis
    from redis.cluster import RedisCluster

    from redismq.cluster import is_cluster

    class Custom(RedisCluster):  # a subclass is a cluster client too
        pass

    # Made without __init__ (which would connect): only the class counts.
    assert is_cluster(object.__new__(RedisCluster)) and is_cluster(object.__new__(Custom))
    assert not is_cluster(redis.Redis()) and not is_cluster(AsyncRedis())
    assert not is_cluster(None)
