"""Issue 14, item 6: datetime, date, time, UUID and Decimal task arguments arrive as the same
types (a tagged JSON form readable in redis-cli); anything else that is not JSON is refused
before sending, naming the argument. Real server."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal
from uuid import UUID, uuid4

import pytest

from redismq import InvalidMessage
from redismq.testing import run_until_idle

VALUES = {
    "aware": datetime(2026, 11, 30, 9, 15, 1, 123456, tzinfo=timezone(timedelta(hours=2))),
    "naive": datetime(2026, 11, 30, 9, 15),
    "day": date(2026, 2, 28),
    "at": time(23, 59, 58, 5),
    "id": uuid4(),
    "price": Decimal("19.90"),
    "tiny": Decimal("1E-30"),
}


def test_typed_arguments_arrive_as_the_same_types(client, app):
    seen = {}

    @app.task(topic="typed")
    def take(when, *, values, nested):
        seen.update(when=when, values=values, nested=nested)

    take.send(VALUES["aware"], values=VALUES, nested=[{"due": [VALUES["day"]]}])
    assert run_until_idle(app).processed == 1
    assert seen["when"] == VALUES["aware"] and seen["when"].tzinfo is not None
    for name, value in VALUES.items():
        assert seen["values"][name] == value and type(seen["values"][name]) is type(value)
    assert seen["values"]["price"].as_tuple() == Decimal("19.90").as_tuple()  # 2 places kept
    assert seen["values"]["naive"].tzinfo is None
    assert seen["nested"] == [{"due": [VALUES["day"]]}]


def test_tagged_form_reads_well_in_redis_cli(client, app):
    @app.task(topic="typed")
    def take(when, price, user_id): ...

    uid = UUID("12345678-1234-5678-1234-567812345678")
    take.send(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC), Decimal("1.50"), user_id=uid)
    [(_, fields)] = client.meta.xrange(client.router.queue_keys("typed", 0).stream) or [
        e for q in range(4) for e in client.meta.xrange(client.router.queue_keys("typed", q).stream)
    ]
    body = fields[b"body"].decode()
    assert '{"$datetime":"2026-01-02T03:04:05+00:00"}' in body
    assert '{"$decimal":"1.50"}' in body
    assert '{"$uuid":"12345678-1234-5678-1234-567812345678"}' in body
    assert json.loads(body)["kwargs"]["user_id"] == {"$uuid": str(uid)}


class User:
    def __init__(self, uid: int) -> None:
        self.id = uid


@pytest.mark.parametrize(
    ("call", "where"),
    [
        (lambda t: t.send(user=User(7)), "kwargs['user']: User"),
        (lambda t: t.send(1, [2, {"x": {3}}]), "args[1][1]['x']: set"),
        (lambda t: t.send(b"raw"), "args[0]: bytes"),
        (lambda t: t.send({1: "one"}), "args[0]: a dict key 1 (int)"),
        (lambda t: t.send(float("nan")), "args[0]: nan"),
        (lambda t: t.send_with_options(kwargs={"d": timedelta(1)}), "kwargs['d']: timedelta"),
    ],
)
def test_other_values_are_refused_before_sending_naming_the_argument(client, app, call, where):
    @app.task(topic="typed")
    def take(*args, **kwargs): ...

    with pytest.raises(InvalidMessage) as caught:
        call(take)
    text = str(caught.value)
    assert where in text and "\n" not in text
    assert "pass" in text  # says what to pass instead
    assert "typed" not in client.topics() or all(
        client.meta.xlen(client.router.queue_keys("typed", q).stream) == 0 for q in range(4)
    )


def test_send_async_encodes_the_same_way(client, app):
    seen = []

    @app.task(topic="typed")
    def take(day):
        seen.append(day)

    async def send() -> None:
        await take.send_async(date(2026, 5, 1))
        with pytest.raises(InvalidMessage, match=r"args\[0\]: User"):
            await take.send_async(User(1))
        await app.async_client.aclose()

    asyncio.run(send())
    run_until_idle(app)
    assert seen == [date(2026, 5, 1)]


def test_a_plain_dict_that_looks_tagged_but_is_not_stays_a_dict(app):
    seen = []

    @app.task(topic="typed")
    def take(value):
        seen.append(value)

    take.send({"$date": "not a date"})
    take.send({"$date": "2026-01-01", "other": 1})
    run_until_idle(app)
    assert sorted(map(str, seen)) == sorted(
        map(str, [{"$date": "not a date"}, {"$date": "2026-01-01", "other": 1}])
    )


def test_a_send_whose_arguments_do_not_fit_the_task_is_refused_before_sending(app, client):
    """As Celery's .delay does: a call the function could never take is one clear error at
    the send, not four failed runs and a dead letter later."""

    @app.task(topic="fit")
    def add(x, y, *, scale=1):
        return (x + y) * scale

    @app.task(topic="fit")
    def anything(*args, **kwargs):
        return len(args) + len(kwargs)

    for args, kwargs, why in [
        ((1,), {}, "missing a required argument: 'y'"),
        ((1, 2, 3), {}, "too many positional arguments"),
        ((1, 2), {"scale": 2, "offset": 1}, "unexpected keyword argument 'offset'"),
    ]:
        with pytest.raises(InvalidMessage, match=f"cannot send .*add: .*{why}"):
            add.send(*args, **kwargs)
    jobs = [add.send(1, 2, scale=3), anything.send(1, 2, k=3)]
    counts = run_until_idle(app)
    assert (counts.processed, counts.failed) == (2, 0)  # the refused sends queued nothing
    assert [j.result(timeout=1) for j in jobs] == [9, 3]


def test_a_decorated_task_is_checked_against_what_its_wrapper_takes(app):
    """A decorator that supplies an argument (with functools.wraps) keeps the call the
    wrapper takes: the send is not refused for the argument it will add."""
    import functools

    def with_db(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            return fn("db", *args, **kwargs)

        return wrapper

    @app.task(topic="wrapped")
    @with_db
    def save(db, x):
        return f"{db}:{x}"

    job = save.send(1)
    run_until_idle(app)
    assert job.result(timeout=1) == "db:1"


def test_a_periodic_task_whose_arguments_do_not_fit_is_refused_when_registered(app):
    with pytest.raises(InvalidMessage, match="missing a required argument: 'x'"):

        @app.periodic(every=60, topic="ticks")
        def needs(x):
            return x
