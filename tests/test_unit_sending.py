"""The rules of a send's attempts (redismq.sending.Attempts), without a server."""

from __future__ import annotations

import pytest

from redismq.errors import BrokerUnavailable, QueueUnavailable, TopicFull
from redismq.routing import Topic, queue_for_key
from redismq.sending import Attempts, prepare_message


def topic(placement: list[str], max_backlog: int = 0) -> Topic:
    return Topic("t", len(placement), 0, 0, max_backlog=max_backlog, placement=placement)


def everywhere(_: str) -> bool:
    return True


def test_a_keyless_send_tries_every_queue_before_it_is_full():
    plan = Attempts(topic(["a"] * 4, 8), prepare_message(1), everywhere, room=None, outage=0)
    tried = [plan.queue]
    for _ in range(3):
        assert plan.when_full() == 0.0
        tried.append(plan.queue)
    assert sorted(tried) == [0, 1, 2, 3]
    with pytest.raises(TopicFull, match="bound of 8"):
        plan.when_full()


def test_a_keyed_send_waits_for_its_own_queue():
    msg = prepare_message(1, key="k")
    own = queue_for_key("k", 4)
    plan = Attempts(topic(["a"] * 4, 8), msg, everywhere, room=5.0, outage=0)
    assert plan.queue == own
    assert plan.when_full() > 0 and plan.queue == own
    refusing = Attempts(topic(["a"] * 4, 8), msg, everywhere, room=None, outage=0)
    with pytest.raises(TopicFull):
        refusing.when_full()


def test_a_blocked_keyless_send_pauses_once_every_queue_was_full_then_tries_again():
    plan = Attempts(topic(["a"] * 2, 4), prepare_message(1), everywhere, room=5.0, outage=0)
    assert plan.when_full() == 0.0  # the other queue
    pause = plan.when_full()  # both full: wait, then start over
    assert 0 < pause <= 0.2 and plan.full == set()


def test_an_unreachable_broker_sends_a_keyless_message_to_another_broker_at_once():
    t = topic(["a", "b", "a", "b"])
    plan = Attempts(t, prepare_message(1), everywhere, room=None, outage=0)
    first = plan.broker
    assert plan.when_unreachable(BrokerUnavailable("cannot reach Redis")) == 0.0
    assert plan.broker != first
    with pytest.raises(BrokerUnavailable):  # both failed, no time left
        plan.when_unreachable(BrokerUnavailable("cannot reach Redis"))


def test_an_unreachable_broker_is_tried_again_until_the_deadline():
    plan = Attempts(topic(["a"] * 2), prepare_message(1, key="k"), everywhere, room=None, outage=5)
    queue = plan.queue
    assert plan.when_unreachable(BrokerUnavailable("cannot reach Redis")) > 0
    assert plan.queue == queue and plan.failed == {"a"}
    late = Attempts(topic(["a"] * 2), prepare_message(1, key="k"), everywhere, room=None, outage=0)
    with pytest.raises(QueueUnavailable, match="keyed message stays on its queue"):
        late.when_unreachable(BrokerUnavailable("cannot reach Redis"))


def test_every_attempt_carries_a_record_of_the_id_past_its_deadline():
    msg = prepare_message(1)
    assert Attempts(topic(["a"]), msg, everywhere, room=None, outage=10).guard_ms == 30_000
    # no retries of its own, but redis-py may send the call again on a new connection
    assert Attempts(topic(["a"]), msg, everywhere, room=None, outage=0).guard_ms == 20_000
