"""Redis Cluster as a broker and as the meta store: a real local cluster of 3 masters with a
replica each (redismq.cluster_server.LocalCluster), joined from Python."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import pytest
import redis
from apps import sideeffects
from apps.sentinel_app import TASK, TOPIC
from conftest import wait_for

from redismq import Client, InvalidURL, NotReplicated, RedisMQError, fetching, retention
from redismq.brokers import add_broker
from redismq.cluster import master_of_tag, slot_of, topology
from redismq.cluster_server import LocalCluster
from redismq.routing import queue_for_key
from redismq.urls import check_url, connect, mask_url

# Tasks the producer sends in the killed-master test: it must still be sending after the
# kill (which waits for 1,000 of them and half a second after its snapshot of the runs).
SENDS = 4000


@pytest.fixture(scope="module")
def local_cluster() -> Iterator[LocalCluster]:
    with LocalCluster(masters=3, replicas=1) as c:
        yield c


@pytest.fixture
def cluster_url(local_cluster: LocalCluster) -> str:
    for node in local_cluster.current_masters():
        r = node.client()
        r.flushall()
        r.script_flush()
        r.close()
    return local_cluster.url


def run_for_at_most(worker, seconds: float):
    """Run a burst worker in a thread; stop it and fail if it has not finished in time
    (a hang must fail the test, not stall the suite)."""
    import threading

    result: list = []
    thread = threading.Thread(target=lambda: result.append(worker.run()), daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        worker.stop()
        thread.join(30)
        pytest.fail(f"the burst worker did not finish within {seconds}s")
    return result[0]


def drain(consumer, expected: int, timeout: float = 20.0) -> list:
    got: list = []
    deadline = time.monotonic() + timeout
    while len(got) < expected and time.monotonic() < deadline:
        batch = consumer.receive(100, block=0.2)
        consumer.ack_many(batch)
        got += batch
    return got


def test_cluster_urls_are_checked_and_masked():
    assert check_url("cluster://127.0.0.1:7000,127.0.0.1:7001")
    assert check_url("clusters://user:pw@h1:7000")
    assert mask_url("cluster://:secret@h1:7000,h2:7001") == "cluster://:***@h1:7000,h2:7001"
    for bad in ("cluster://", "cluster://h1", "cluster://h1:7000/0", "cluster://h1:x"):
        with pytest.raises(InvalidURL):
            check_url(bad)


def test_a_topics_queues_spread_over_every_master(cluster_url):
    client = Client(cluster_url)
    t = client.create_topic("orders", 12)
    nodes = topology(client.meta)
    assert len(nodes) == 3
    held = {m["node"]: 0 for m in nodes}
    for q in range(12):
        held[master_of_tag(nodes, t.shards[q])] += 1
    assert sorted(held.values()) == [4, 4, 4]
    # the topic's queues on one master share one slot: one XREADGROUP reads them all
    assert len({slot_of(t.shards[q]) for q in range(12)}) == 3
    client.send_many("orders", [{"n": i} for i in range(24)])
    for q in range(12):
        stream = client.router.queue_keys("orders", q).stream
        node = local_node(client, stream)
        assert node.xlen(stream) == 2
    client.close()


def local_node(client: Client, key: str):
    rc = client.meta
    return rc.get_redis_connection(rc.get_node_from_key(key))


def test_send_and_drain_with_the_cluster_as_meta_and_broker(cluster_url):
    client = Client(cluster_url)
    assert client.router.keys.brokers == "{rmq}:brokers"  # meta keys share one slot
    client.create_topic("mail", 6)
    ids = {client.send("mail", {"n": i}) for i in range(20)}
    ids |= set(client.send_many("mail", [{"n": i} for i in range(20)]))
    ids.add(client.send("mail", {"k": 1}, key="customer-7"))
    first = client.send("mail", {"d": 1}, dedup_key="once")
    assert client.send("mail", {"d": 1}, dedup_key="once") == first
    ids.add(first)
    ids.add(client.send("mail", {"late": 1}, delay=0.2))
    ids.add(client.send("mail", {"r": 1}, durability="replicated"))
    consumer = client.consumer("mail", "g")
    got = drain(consumer, len(ids))
    assert {m.id for m in got} == ids
    assert consumer.backlog() == 0
    client.close()


def test_a_cluster_broker_beside_a_standalone_one(url, cluster_url):
    meta = Client(url)
    add_broker(meta, "solo", url)
    add_broker(meta, "c1", cluster_url)
    t = meta.create_topic("mixed", 8)
    assert set(t.placement) == {"solo", "c1"}
    assert all((q in t.shards) == (b == "c1") for q, b in enumerate(t.placement))
    ids = set(meta.send_many("mixed", [{"n": i} for i in range(40)]))
    consumer = meta.consumer("mixed", "g")
    assert {m.id for m in drain(consumer, 40)} == ids
    meta.close()


def test_a_replicated_send_waits_for_the_replica_of_its_own_master():
    """WAIT on a cluster client goes to its default node; the send must wait on the master
    of its queue's slot (on the connection that wrote)."""
    with LocalCluster(masters=3, replicas=1) as c:
        client = Client(c.url, replica_timeout=0.3)
        t = client.create_topic("safe", 3, durability="replicated")
        nodes = topology(client.meta)
        default = client.meta.get_default_node().port
        ports = [int(master_of_tag(nodes, t.shards[q]).rsplit(":", 1)[1]) for q in range(3)]
        lonely = next(q for q in range(3) if ports[q] != default)
        [replica] = c.replicas[c.masters.index(c.node_for(ports[lonely]))]
        replica.kill()
        key = next(k for k in map(str, range(1000)) if queue_of(k, 3) == lonely)
        with pytest.raises(NotReplicated):
            client.send("safe", {"x": 1}, key=key)
        with pytest.raises(NotReplicated):
            client.send("safe", {"x": 1}, key=key, dedup_key="d")
        other = next(k for k in map(str, range(1000)) if queue_of(k, 3) != lonely)
        assert client.send("safe", {"x": 1}, key=other)
        client.close()


def queue_of(key: str, queues: int) -> int:
    from redismq.routing import queue_for_key

    return queue_for_key(key, queues)


def test_cli_topic_describe_names_each_queues_master(cluster_url):
    from click.testing import CliRunner

    from redismq.cli.main import main

    Client(cluster_url).create_topic("shown", 6)
    result = CliRunner().invoke(main, ["topic", "describe", "shown", "--url", cluster_url])
    assert result.exit_code == 0, result.output
    masters = {m["node"] for m in topology(connect(cluster_url))}
    assert all(m in result.output for m in masters), result.output


def test_worker_threads_read_one_slot_each(cluster_url):
    from redismq import App
    from redismq.workers.worker import Worker

    app = App(Client(cluster_url))

    @app.task(topic="work")
    def noop(n: int) -> None:
        return None

    app.client.create_topic("work", 12)
    w = Worker(app, concurrency=1, burst=True)
    assert sorted(len(loop.consumer.queues) for loop in w.loops) == [4, 4, 4]
    for _ in range(60):
        noop.send(1)
    counts = run_for_at_most(w, 120)
    assert counts.processed == 60


def test_async_client_sends_to_a_cluster(cluster_url):
    import asyncio

    from redismq import AsyncClient

    async def main() -> set[str]:
        async with AsyncClient(cluster_url) as ac:
            await ac.create_topic("async", 6)
            ids = {await ac.send("async", {"n": i}) for i in range(10)}
            ids.add(await ac.send("async", {"k": 1}, key="k", dedup_key="d"))
            ids |= set(await ac.send_many("async", [{"n": i} for i in range(10)]))
            return ids

    ids = asyncio.run(main())
    client = Client(cluster_url)
    assert client.topic("async").shards  # placed by tag over the masters
    assert {m.id for m in drain(client.consumer("async", "g"), len(ids))} == ids
    client.close()


def test_expand_on_a_cluster_keeps_tags_and_spreads_the_new_queues(cluster_url):
    from redismq.brokers import expand_topic

    client = Client(cluster_url)
    before = client.create_topic("grow", 2).shards
    sent = client.send("grow", {"n": 1}, dedup_key="once")
    after = expand_topic(client, "grow", 9).shards
    assert {q: after[q] for q in before} == before
    nodes = topology(client.meta)
    held = {m["node"]: 0 for m in nodes}
    for q in range(9):
        held[master_of_tag(nodes, after[q])] += 1
    assert sorted(held.values()) == [3, 3, 3]
    assert len(set(after.values())) == 3  # still one tag (one blocking read) per master
    assert client.send("grow", {"n": 1}, dedup_key="once") == sent
    client.close()


class Producer(threading.Thread):
    """Sends `total` tasks with durability="replicated", each with its own dedup key; a send
    that raised is sent again with the same dedup key until it returns."""

    def __init__(self, url: str, total: int) -> None:
        super().__init__(daemon=True)
        self.client = Client(url, durability="replicated", replica_timeout=1.0)
        self.total = total
        self.acked: list[str] = []
        self.failures = 0
        self.stopping = threading.Event()

    def run(self) -> None:
        for n in range(self.total):
            key = f"t-{n}"
            body = {"task": TASK, "args": [key], "kwargs": {}}
            while not self.stopping.is_set():
                try:
                    self.client.send(TOPIC, body, dedup_key=key)
                    self.acked.append(key)
                    break
                except RedisMQError:
                    self.failures += 1
                    time.sleep(0.05)
        self.client.close()


def all_settled(client: Client, keys: set[str]) -> bool:
    """Whether the message of each of these tasks (sent with its key as dedup key) is in its
    group's done record: its run's settle reached its master."""
    topic = client.topic(TOPIC, create=False)
    by_queue: dict[int, list[str]] = {}
    for key in keys:
        by_queue.setdefault(queue_for_key(key, topic.queues), []).append(key)
    for q, group_keys in by_queue.items():
        qk = client.router.queue_keys(TOPIC, q)
        redis = client.router.queue_broker(topic, q).redis
        ids = redis.mget([qk.dedup(k) for k in group_keys])  # one slot: the queue's tag
        if None in ids or None in redis.zmscore(qk.done("workers"), ids):
            return False
    return True


@pytest.mark.fault
def test_a_killed_master_loses_no_acknowledged_task(tmp_path, processes):
    """4,000 tasks through a 3-master cluster (meta store and broker) while the master of
    the meta keys and of some queues is SIGKILLed: its replica takes over, the producer and
    the worker go on, every acknowledged send runs, and only what was in flight runs twice."""
    db = tmp_path / "runs.db"
    sideeffects.connect(db).close()
    with LocalCluster(masters=3, replicas=1) as c:
        client = Client(c.url)
        t = client.create_topic(TOPIC, 6, durability="replicated")
        meta_port = client.meta.get_node_from_key(client.router.keys.topics).port
        nodes = topology(client.meta)
        victim_port = next(
            p
            for p in (int(master_of_tag(nodes, t.shards[q]).rsplit(":", 1)[1]) for q in range(6))
            if p == meta_port
        )
        victim = c.node_for(victim_port)
        processes.start(
            "worker",
            "tests.apps.sentinel_app:app",
            "--url",
            c.url,
            "--processes",
            "1",
            "--concurrency",
            "4",
            "--visibility-timeout",
            "2",
            "--log-level",
            "ERROR",
            env={sideeffects.ENV_DB: str(db)},
        )
        producer = Producer(c.url, SENDS)
        producer.start()
        try:
            # kill in the steady state: the worker runs, the producer is well under way
            assert wait_for(lambda: sideeffects.count(db, TASK) >= 200, timeout=120)
            # run well before the master dies: settled (a batch's runs are settled after
            # its last) and replicated by then
            settled_before = set(sideeffects.runs(db, TASK))
            assert wait_for(lambda: all_settled(client, settled_before), timeout=60)
            snapped = time.monotonic()
            assert wait_for(lambda: len(producer.acked) >= 1000, timeout=120)
            time.sleep(max(0.0, snapped + 0.5 - time.monotonic()))
            # sent and not yet run when the master dies (a loaded machine's worker lags)
            unrun_at_kill = len(producer.acked) - sideeffects.count(db, TASK)
            victim.kill()
            killed_at = len(producer.acked)
            c.wait_ok(timeout=30)
            assert victim not in c.current_masters()
            # the old master comes back as the new master's replica (its nodes.conf says who
            # it was; the cluster tells it who leads now), so replicated sends confirm again
            victim.restart()
            c.wait_ok(timeout=30, replicas=1)
            # the producer goes on within seconds of the failover
            assert wait_for(lambda: len(producer.acked) >= killed_at + 100, timeout=30)
            producer.join(180)
            assert not producer.is_alive()
            acked = set(producer.acked)
            assert len(acked) == SENDS
            assert wait_for(lambda: set(sideeffects.runs(db, TASK)) >= acked, timeout=90)
        finally:
            producer.stopping.set()
            client.close()
    runs = sideeffects.runs(db, TASK)
    missing = acked - set(runs)
    assert not missing, f"acknowledged but never processed: {sorted(missing)[:10]}"
    repeated = {k: n for k, n in runs.items() if n > 1}
    # at least once: what was in flight on the dead master (of what was sent and not yet
    # run, what its fetch threads held; and settles not yet replicated) may run again;
    # nothing else does
    assert not settled_before & set(repeated), sorted(settled_before & set(repeated))[:10]
    assert sum(n - 1 for n in repeated.values()) <= unrun_at_kill + 100, repeated
    print(f"failed sends {producer.failures}, repeated {len(repeated)}")


def test_status_and_dashboard_show_each_master_and_its_queues(cluster_url):
    from rich.console import Console

    from redismq.cli.dashboard_data import gather
    from redismq.cli.dashboard_view import render
    from redismq.status import snapshot

    client = Client(cluster_url)
    client.create_topic("seen", 6)
    client.send_many("seen", [{"n": i} for i in range(12)])
    [broker] = snapshot(client)["brokers"]
    assert broker["role"] == "cluster"
    masters = broker["cluster"]
    assert len(masters) == 3
    assert all(len(m["replicas"]) == 1 for m in masters)
    assert sorted(q for m in masters for q in m["queues"]) == sorted(f"seen#{q}" for q in range(6))
    assert all(len(m["queues"]) == 2 for m in masters)
    [topic] = snapshot(client)["topics"]
    assert topic["length"] == 12

    data = gather(client)
    console = Console(record=True, width=160)
    console.print(render(data, width=160))
    text = console.export_text()
    assert all(m["node"] in text for m in masters), text
    assert "master, 2 queues" in text
    client.close()


def test_broker_add_takes_a_cluster_url_and_the_nameserver_reports_its_masters(url, cluster_url):
    from click.testing import CliRunner

    from redismq.brokers import list_brokers
    from redismq.cli.main import main
    from redismq.nameserver import NameServer

    result = CliRunner().invoke(main, ["broker", "add", "c1", cluster_url, "--url", url])
    assert result.exit_code == 0, result.output
    client = Client(url)
    NameServer(client).check_all()
    [c1] = list_brokers(client)
    assert c1.health["up"] is True and c1.health["master"]["role"] == "cluster"
    assert len(c1.health["masters"]) == 3
    assert all(len(m["replicas"]) == 1 for m in c1.health["masters"])
    bad = CliRunner().invoke(main, ["broker", "add", "c2", "cluster://h1", "--url", url])
    assert bad.exit_code == 1 and "Traceback" not in bad.output
    client.close()


def test_task_results_and_an_ordered_group_on_a_cluster(cluster_url):
    from redismq import App
    from redismq.workers.worker import Worker

    app = App(Client(cluster_url))
    seen: list[int] = []

    @app.task(topic="calc")
    def double(n: int) -> int:
        return 2 * n

    @app.task(topic="seq", ordered=True)
    def record(n: int) -> None:
        seen.append(n)

    app.client.create_topic("calc", 6)
    app.client.create_topic("seq", 3)
    job = double.send(21)
    for n in range(30):
        record.send_with_options(args=(n,), key="one-customer")
    worker = Worker(app, concurrency=2, burst=True)
    counts = run_for_at_most(worker, 120)
    assert counts.processed == 31
    assert job.result(timeout=5) == 42
    assert seen == list(range(30))
    app.client.close()


def test_send_many_of_a_task_on_a_cluster_indexes_each_job(cluster_url):
    """On a Redis Cluster a job's id index lives on its id's own slot, not the queue's: the
    batch writes the indexes after its calls, and every job is found by its id."""
    from redismq import App
    from redismq.workers.worker import Worker

    app = App(Client(cluster_url))

    @app.task(topic="calc")
    def double(n: int) -> int:
        return 2 * n

    app.client.create_topic("calc", 6)
    jobs = double.send_many((n,) for n in range(40))

    async def send_async() -> list[str]:
        sent = await double.send_many_async((n,) for n in range(40, 60))
        await app.async_client.aclose()
        return [j.id for j in sent]

    jobs += [app.job(i) for i in asyncio.run(send_async())]
    assert len({j.queue for j in jobs}) == 6
    assert all(app.job(j.id).status() == "queued" for j in jobs)
    counts = run_for_at_most(Worker(app, concurrency=2, burst=True), 120)
    assert counts.processed == 60
    assert [j.result(timeout=5) for j in jobs] == [2 * n for n in range(60)]
    app.client.close()


def test_a_batch_whose_index_node_cannot_be_reached_stores_each_task_once(cluster_url, monkeypatch):
    """On a Redis Cluster a batch's id indexes (on their ids' slots) are written before its
    entries: when that fails, the part moves to another broker with nothing stored yet
    (found by a review: written after, the moved part stored the tasks a second time)."""
    import redis.cluster

    from redismq import App
    from redismq.server import LocalServer

    real = redis.cluster.ClusterPipeline.execute
    failed: list[bool] = []

    def execute(self, *args, **kwargs):
        names = {c.args[0] for c in self._execution_strategy.command_queue}
        if not failed and names == {"SET"}:
            failed.append(True)
            self.reset()
            raise redis.ConnectionError("the index's node cannot be reached")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(redis.cluster.ClusterPipeline, "execute", execute)
    with LocalServer() as meta, LocalServer() as other:
        client = Client(meta.url)
        add_broker(client, "c", cluster_url)
        add_broker(client, "b1", other.url)
        t = client.create_topic("calc", 4)
        assert set(t.placement) == {"c", "b1"}
        app = App(client)

        @app.task(topic="calc")
        def double(n: int) -> int:
            return 2 * n

        jobs = double.send_many((n,) for n in range(8))
        assert failed
        ids = [
            f[b"id"].decode()
            for q in range(4)
            for _, f in client.router.queue_broker(t, q).redis.xrange(
                client.router.queue_keys("calc", q).stream
            )
        ]
        assert sorted(ids) == sorted(j.id for j in jobs) and len(set(ids)) == 8
        assert all(app.job(j.id).status() == "queued" for j in jobs)
        client.close()


def test_a_dedup_key_s_second_send_on_a_cluster_leaves_no_index_of_its_own(cluster_url):
    """A task's index on a Redis Cluster is written before its entry; a send that turns out
    a duplicate of a dedup key removes the index it wrote, and returns the first job."""
    from redismq import App

    app = App(Client(cluster_url))

    @app.task(topic="calc")
    def double(n: int) -> int:
        return 2 * n

    app.client.create_topic("calc", 3)
    first = double.send_with_options(args=(1,), dedup_key="once")
    again = double.send_with_options(args=(1,), dedup_key="once")
    assert again.id == first.id and app.job(first.id).status() == "queued"
    indexes = [
        k
        for node in app.client.meta.get_primaries()
        for k in app.client.meta.scan_iter(match="rmq:jobindex:*", target_nodes=node)
    ]
    assert indexes == [f"rmq:jobindex:{first.id}".encode()]
    app.client.close()


def test_a_send_that_leaves_a_cluster_broker_leaves_no_index_behind(cluster_url):
    """A task's index on a Redis Cluster is written before its entry; an attempt there that
    stores nothing (a full queue, then another broker's queue) or a send that fails removes
    it, so that job(id) finds the job where it went (found by a review: the first index,
    on the broker looked at first, said the other queue)."""
    from redismq import App, TopicFull
    from redismq.server import LocalServer

    with LocalServer() as meta, LocalServer() as other:
        client = Client(meta.url)
        add_broker(client, "a", cluster_url)  # looked at first by job(id)
        add_broker(client, "b", other.url)
        t = client.create_topic("calc", 2, max_backlog=2)  # room for 1 per queue
        app = App(client)

        @app.task(topic="calc")
        def double(n: int) -> int:
            return 2 * n

        first = [double.send(n) for n in range(2)]
        on_b = t.placement.index("b")
        client.router.queue_broker(t, on_b).redis.delete(
            client.router.queue_keys("calc", on_b).stream
        )
        moved = double.send(5)  # round-robin to the cluster's full queue, then to b's
        assert t.placement[moved.queue] == "b"
        assert app.job(moved.id).queue == moved.queue
        with pytest.raises(TopicFull):
            double.send(7)
        cluster = client.router.broker("a").redis
        indexes = {
            k.decode().rsplit(":", 1)[1]
            for node in cluster.get_primaries()
            for k in cluster.scan_iter(match="rmq:jobindex:*", target_nodes=node)
        }
        assert indexes == {j.id for j in first if t.placement[j.queue] == "a"}
        client.close()


def test_a_batch_part_that_moves_off_a_cluster_broker_leaves_no_index_behind(
    cluster_url, monkeypatch
):
    """A part's indexes written on a Redis Cluster before its calls are removed when the
    calls fail and the part moves to another broker: job(id) finds where each went."""
    from redismq import App
    from redismq.routing import Broker
    from redismq.server import LocalServer

    real = Broker.script_on_node
    failed: list[bool] = []

    def script_on_node(self, name, key, calls, wait_ms=-1):
        if not failed and self.cluster:
            failed.append(True)
            raise redis.ConnectionError("the cluster broker cannot be reached")
        return real(self, name, key, calls, wait_ms)

    monkeypatch.setattr(Broker, "script_on_node", script_on_node)
    with LocalServer() as meta, LocalServer() as other:
        client = Client(meta.url)
        add_broker(client, "a", cluster_url)  # looked at first by job(id)
        add_broker(client, "b", other.url)
        t = client.create_topic("calc", 2)
        app = App(client)

        @app.task(topic="calc")
        def double(n: int) -> int:
            return 2 * n

        jobs = double.send_many((n,) for n in range(6))
        assert failed and {t.placement[j.queue] for j in jobs} == {"b"}
        assert [app.job(j.id).queue for j in jobs] == [j.queue for j in jobs]
        client.close()


def test_a_consumers_reads_retire_the_idle_consumers_of_its_queues_on_every_master(
    cluster_url, monkeypatch
):
    monkeypatch.setattr(retention, "CONSUMER_IDLE", 0.0)
    monkeypatch.setattr(fetching, "RETIRE_EVERY", 0.0)
    gone, reader = Client(cluster_url), Client(cluster_url)  # `gone` closes nothing
    gone.create_topic("quiet", 6)
    gone.send_many("quiet", list(range(6)))
    left = gone.consumer("quiet", "g", name="left")
    assert len(drain(left, 6)) == 6
    streams = [gone.router.queue_keys("quiet", q).stream for q in range(6)]

    def names() -> set[str]:
        return {
            c["name"].decode() for s in streams for c in local_node(gone, s).xinfo_consumers(s, "g")
        }

    assert names() == {"left"}
    live = reader.consumer("quiet", "g", name="live")
    assert live.receive(count=1, block=0.05) == []
    assert "left" not in names()
    reader.close()
    gone.close()


def test_a_cluster_as_the_meta_store_of_standalone_brokers(cluster_url):
    from redismq.brokers import drain_broker, remove_broker
    from redismq.server import LocalServer

    with LocalServer() as s0, LocalServer() as s1:
        client = Client(cluster_url)
        add_broker(client, "b0", s0.url)
        add_broker(client, "b1", s1.url)
        t = client.create_topic("meta", 4)
        assert set(t.placement) == {"b0", "b1"} and not t.shards
        ids = set(client.send_many("meta", [{"n": i} for i in range(20)]))
        consumer = client.consumer("meta", "g")
        assert {m.id for m in drain(consumer, 20)} == ids
        drain_broker(client, "b0")
        remove_broker(client, "b0")
        assert set(Client(cluster_url).topic("meta").placement) == {"b1"}
        client.delete_group("meta", "g")
        assert client.groups("meta") == []
        client.delete_topic("meta", force=True)  # no group reads its entries any more
        assert client.topics() == []
        client.close()


def test_a_worker_follows_a_slot_moved_to_another_master_without_a_restart(
    local_cluster, cluster_url
):
    from redismq import App
    from redismq.workers.worker import Worker

    c = local_cluster
    app = App(Client(cluster_url))
    seen: list[int] = []

    @app.task(topic="moving")
    def record(n: int) -> None:
        seen.append(n)

    t = app.client.create_topic("moving", 3)
    worker = Worker(app, concurrency=1, block=0.2)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        for n in range(50):
            record.send(n)
        assert wait_for(lambda: len(seen) == 50, timeout=20)
        slot = slot_of(t.shards[0])
        before = c.master_of_slot(slot)
        c.move_slot(slot, next(m for m in c.current_masters() if m is not before))
        assert c.master_of_slot(slot) is not before
        for n in range(50, 100):
            record.send(n)
        assert wait_for(lambda: len(seen) >= 100, timeout=30), len(seen)
    finally:
        worker.stop()
        thread.join(30)
    assert sorted(seen) == list(range(100))
    app.client.close()


def test_async_replicated_sends_to_a_cluster_are_refused_and_store_nothing(cluster_url):
    """AsyncClient's WAIT would not reach a queue's master on a Redis Cluster: a replicated
    send or send_many is refused before it writes."""
    import asyncio

    from redismq import AsyncClient

    async def main() -> None:
        async with AsyncClient(cluster_url) as ac:
            await ac.create_topic("safe", 3)
            with pytest.raises(RedisMQError, match="cannot yet make replicated sends"):
                await ac.send("safe", {"n": 1}, durability="replicated")
            with pytest.raises(RedisMQError, match="cannot yet make replicated sends"):
                await ac.send_many("safe", [{"n": 2}], durability="replicated")

    asyncio.run(main())
    client = Client(cluster_url)
    streams = [client.router.queue_keys("safe", q).stream for q in range(3)]
    assert [client.meta.xlen(s) for s in streams] == [0, 0, 0]
    client.close()


def test_a_cluster_node_whose_port_was_taken_starts_on_fresh_ones():
    """A node's ports are chosen when the cluster is made (fixed: a node restarts on its
    own); another process may take one before the start (a CI run failed so)."""
    import socket

    cluster = LocalCluster(masters=1, replicas=0)
    taken = cluster.masters[0].port
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", taken))
        squatter.listen()
        with cluster as c:
            assert c.masters[0].port != taken
            r = connect(c.url)
            r.set("k", "v")
            assert r.get("k") == b"v"
            r.close()
