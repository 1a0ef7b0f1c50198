"""redismq.testing used as a user would: the pytest plugin's fixtures (loaded through the
package's entry point, not through this project's conftest), run_until_idle on a real
server, and the eager mode (no server)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator

import pytest

import redismq.testing
from redismq import App, Client, JobFailed, Message, current_job
from redismq.testing import EAGER_URL, NotIdle, bind, eager_app, eager_client, run_until_idle

# -- a user's application, defined at import time as in real code ------------------------

app = App()  # would connect to $REDISMQ_URL on first use; the tests bind it instead
calls: dict[str, list] = {}


@app.task(topic="orders", max_retries=3, backoff=30.0)
def charge(order_id: int) -> str:
    """Fails on its first attempt (a flaky payment API), then charges and sends a receipt."""
    calls.setdefault("charge", []).append((order_id, current_job().attempt))
    if current_job().attempt == 0:
        raise ConnectionError("payment API timed out")
    send_receipt.send(order_id)
    return f"charged {order_id}"


@app.task(topic="receipts")
def send_receipt(order_id: int) -> str:
    calls.setdefault("receipt", []).append(order_id)
    return f"receipt {order_id}"


@app.task(topic="reports", max_retries=2, backoff=30.0)
def broken_report() -> None:
    calls.setdefault("report", []).append(current_job().attempt)
    raise ValueError("no data")


@app.task(topic="loop")
def forever(n: int) -> None:
    """A bug: sends itself again, forever."""
    forever.send(n + 1)


@pytest.fixture(autouse=True)
def fresh_calls() -> None:
    calls.clear()


@pytest.fixture(params=["server", "eager"])
def user_app(request: pytest.FixtureRequest) -> Iterator[App]:
    """The user's app bound to the real test server, or to the eager (in-memory) mode."""
    if request.param == "server":
        with bind(app, request.getfixturevalue("redismq_client")) as bound:
            yield bound
    else:
        with eager_app(app) as bound:
            yield bound


# -- the same behaviour on a real server and in eager mode -------------------------------


def test_retries_dead_letters_and_chains_run_to_the_end_with_exact_counts(user_app: App) -> None:
    jobs = [charge.send(1), charge.send(2)]
    report = broken_report.send()
    started = time.monotonic()

    counts = run_until_idle(user_app)

    assert time.monotonic() - started < 5  # the 30 s backoffs were not slept through
    # 2 charges (each fails once), 2 receipts they sent, 1 report run 3 times then dead
    assert (counts.processed, counts.failed, counts.retried, counts.dead) == (4, 5, 4, 1)
    assert counts.duplicates == 0
    assert sorted(calls["charge"]) == [(1, 0), (1, 1), (2, 0), (2, 1)]
    assert sorted(calls["receipt"]) == [1, 2]
    assert calls["report"] == [0, 1, 2]
    assert [j.status() for j in jobs] == ["done", "done"]
    assert [j.result(timeout=1) for j in jobs] == ["charged 1", "charged 2"]
    assert report.status() == "dead"
    with pytest.raises(JobFailed, match="ValueError: no data"):
        report.result(timeout=1)
    [dead] = user_app.client.dead_letters("reports", "workers")
    assert dead.id == report.id and dead.attempts == 3
    # idle: a second run finds nothing to do
    assert run_until_idle(user_app).processed == 0


def test_topics_limit_the_run(user_app: App) -> None:
    charge.send(1)
    broken_report.send()
    counts = run_until_idle(user_app, topics=["reports"])
    assert (counts.processed, counts.dead) == (0, 1)
    assert "charge" not in calls
    counts = run_until_idle(user_app, topics=["orders", "receipts"])
    assert counts.processed == 2  # the charge and the receipt it sent


def test_delayed_messages_run_at_once_unless_asked_to_wait(user_app: App) -> None:
    later = send_receipt.send_with_options(args=(7,), delay=3600)
    assert run_until_idle(user_app).processed == 1
    assert later.result(timeout=1) == "receipt 7"

    soon = send_receipt.send_with_options(args=(8,), delay=0.3)
    started = time.monotonic()
    assert run_until_idle(user_app, skip_delays=False).processed == 1
    assert time.monotonic() - started >= 0.25
    assert soon.result(timeout=1) == "receipt 8"


def test_a_task_that_keeps_sending_itself_stops_at_max_messages(user_app: App) -> None:
    forever.send(0)
    with pytest.raises(NotIdle, match=r"50 messages ran \(max_messages\) and work is left"):
        run_until_idle(user_app, max_messages=50, topics=["loop"])


# -- on a real server -----------------------------------------------------------------


def test_plugin_is_loaded_from_the_entry_point(pytestconfig: pytest.Config) -> None:
    assert pytestconfig.pluginmanager.get_plugin("redismq") is redismq.testing


def test_fixtures_give_a_fresh_server_client_and_app(
    redismq_url: str, redismq_client: Client, redismq_app: App
) -> None:
    assert redismq_client.url == redismq_url
    assert redismq_app.client is redismq_client
    redismq_client.ping()
    assert redismq_client.topics() == []  # emptied before each test


def test_handlers_and_an_app_made_by_the_fixture(redismq_app: App) -> None:
    seen: list[object] = []

    @redismq_app.consumer("events", group="audit", max_retries=1, backoff=10.0)
    def audit(msg: Message) -> None:
        if msg.body == "bad":
            raise RuntimeError("refused")
        seen.append(msg.body)

    redismq_app.client.send_many("events", ["a", "bad", "b"])
    counts = run_until_idle(redismq_app)
    assert sorted(seen) == ["a", "b"]
    assert (counts.processed, counts.failed, counts.retried, counts.dead) == (2, 2, 1, 1)


def test_ordered_group_retries_in_place_without_sleeping(redismq_app: App) -> None:
    done: list[int] = []

    @redismq_app.task(topic="ledger", ordered=True, backoff=60.0, name="tests.post")
    def post(n: int) -> None:
        if n == 2 and current_job().attempt == 0:
            raise RuntimeError("conflict")
        done.append(n)

    for n in range(5):
        post.send_with_options(args=(n,), key="account-1")
    started = time.monotonic()
    counts = run_until_idle(redismq_app)
    assert time.monotonic() - started < 5
    assert done == [0, 1, 2, 3, 4]  # the failed message held its queue until it succeeded
    assert (counts.processed, counts.failed, counts.retried) == (5, 1, 1)


def test_work_held_by_another_consumer_is_reported_after_the_timeout(redismq_app: App) -> None:
    @redismq_app.task(topic="held", name="tests.held")
    def held() -> None:
        pass

    held.send()
    other = redismq_app.client.consumer("held", "workers")
    assert len(other.receive(block=None)) == 1  # taken by a "worker" that never answers
    with pytest.raises(NotIdle, match=r"work was left after 0\.3s \(held/workers: 1\)"):
        run_until_idle(redismq_app, timeout=0.3)


def test_an_app_without_tasks_is_refused(redismq_app: App) -> None:
    with pytest.raises(ValueError, match="no task or handler"):
        run_until_idle(redismq_app)


def test_bind_gives_the_app_its_client_back(redismq_client: Client) -> None:
    mine = App(redismq_client)
    other = eager_client()
    with bind(mine, other) as bound:
        assert bound is mine and mine.client is other
    assert mine.client is redismq_client


def test_the_projects_tests_run_on_the_plugins_fixtures(
    server, redismq_server, client, redismq_client, app, redismq_app
) -> None:
    assert server is redismq_server
    assert client is redismq_client
    assert app is redismq_app


# -- eager mode -------------------------------------------------------------------------


def test_eager_app_fixture_needs_no_server(redismq_eager_app: App) -> None:
    @redismq_eager_app.task(topic="math", name="tests.add")
    def add(x: int, y: int) -> int:
        return x + y

    assert redismq_eager_app.client.url == EAGER_URL
    job = add.send(2, 3)
    assert job.status() == "queued"  # nothing runs until run_until_idle
    assert run_until_idle(redismq_eager_app).processed == 1
    assert job.result(timeout=1) == 5


def test_eager_mode_sends_from_async_code_too() -> None:
    from tests.conftest import round_trips

    with eager_app(app) as bound:
        with round_trips() as sync_trips:
            job = asyncio.run(send_receipt.send_async(5))
        assert sync_trips == []  # sent by the eager async client, not the sync one
        assert run_until_idle(bound).processed == 1
        assert bound.job(job.id).result(timeout=1) == "receipt 5"


def test_each_eager_app_has_its_own_data() -> None:
    with eager_app() as first, eager_app() as second:
        first.client.send("t", 1)
        assert second.client.topics() == []
        assert first.client.topics() == ["t"]


def test_eager_mode_without_fakeredis_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "fakeredis", None)
    with pytest.raises(redismq.RedisMQError, match=r"pip install 'fakeredis\[lua\]'"):
        eager_client()


# -- in a project of its own -----------------------------------------------------------


USER_TESTS = """
from redismq.testing import run_until_idle


def test_on_a_real_server(redismq_app):
    @redismq_app.task(topic="jobs", max_retries=1, backoff=30)
    def flaky(n):
        from redismq import current_job

        if current_job().attempt == 0:
            raise RuntimeError("once")
        return n

    job = flaky.send(3)
    counts = run_until_idle(redismq_app)
    assert (counts.processed, counts.retried) == (1, 1)
    assert job.result(timeout=1) == 3


def test_in_eager_mode(redismq_eager_app):
    @redismq_eager_app.task(topic="jobs")
    def double(n):
        return 2 * n

    job = double.send(4)
    assert run_until_idle(redismq_eager_app).processed == 1
    assert job.result(timeout=1) == 8
"""


def test_a_project_without_any_conftest_gets_the_fixtures(tmp_path) -> None:
    (tmp_path / "test_user.py").write_text(textwrap.dedent(USER_TESTS))
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 passed" in proc.stdout


def test_an_eager_app_creates_its_topics_without_a_warning(caplog):
    """The topic-created warning is for a real server (where the default queue count may
    not be what was meant); in memory, for a unit test, it is noise."""
    with caplog.at_level("WARNING", logger="redismq"), eager_app() as app:

        @app.task(topic="quiet")
        def echo(x):
            return x

        job = echo.send(1)
        run_until_idle(app)
        assert job.result(timeout=1) == 1
    assert not [r for r in caplog.records if "did not exist" in r.getMessage()]
