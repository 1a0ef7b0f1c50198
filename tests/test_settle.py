"""Settling outcomes on a real server: only the owner settles (rule 13), one bad result
fails alone, results land in their own job, and pruning follows the server's clock."""

from __future__ import annotations

from redismq.consumer import CANCELLED


def test_ack_many_mixing_cancelled_and_results_writes_each_result_to_its_own_job(client, app):
    @app.task(topic="mixed")
    def work(n):
        return n

    client.create_topic("mixed", queues=1)
    jobs = [work.send(n) for n in range(4)]
    consumer = client.consumer("mixed", work.group)
    got = sorted(consumer.receive(count=10, block=1), key=lambda m: m.body["args"][0])
    assert len(got) == 4
    consumer.ack_many(got, [CANCELLED, "one", CANCELLED, "three"])
    assert jobs[1].result(timeout=1) == "one"
    assert jobs[3].result(timeout=1) == "three"
    assert client.meta.xpending(jobs[0].keys.stream, work.group)["pending"] == 0
