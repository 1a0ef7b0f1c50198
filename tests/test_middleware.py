"""Issue 14, item 3: `redismq.Middleware` hooks, in every worker process and in
`run_until_idle`, on a real server."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from apps import sideeffects

from redismq import App, Middleware
from redismq.testing import run_until_idle


def rows(path: Path) -> list[tuple[str, str, int]]:
    conn = sqlite3.connect(str(path))
    try:
        return conn.execute("SELECT kind, key, pid FROM runs ORDER BY rowid").fetchall()
    finally:
        conn.close()


def test_hooks_run_in_every_worker_process_start_before_the_first_job(
    client, url, processes, tmp_path
):
    db = tmp_path / "hooks.db"
    sideeffects.connect(db).close()
    client.create_topic("orders", queues=4)
    bodies = [{"task": "orders.import", "args": [str(i)], "kwargs": {}} for i in range(40)]
    bodies.append({"task": "orders.import", "args": ["not a number"], "kwargs": {}})
    client.send_many("orders", bodies)
    proc = processes.start(
        "worker",
        "tests.apps.firsthour_app:app",
        "--url",
        url,
        "--processes",
        "2",
        "--concurrency",
        "2",
        "--burst",
        "--log-level",
        "WARNING",
        env={sideeffects.ENV_DB: str(db)},
    )
    output, _ = proc.communicate(timeout=90)
    assert proc.returncode == 0, output
    seen = rows(db)
    pids = {pid for kind, _, pid in seen if kind == "before"}
    assert pids  # at least one process ran jobs
    for pid in {pid for _, _, pid in seen}:
        kinds = [kind for kind, _, p in seen if p == pid]
        assert kinds[0] == "start" and kinds[-1] == "stop", kinds
        assert kinds.count("start") == kinds.count("stop") == 1
    assert all(key.endswith("started=True") for kind, key, _ in seen if kind == "before")
    after = [key for kind, key, _ in seen if kind == "after"]
    assert sum(" NoneType" in key for key in after) == 40  # every success, with its result
    assert any(key.endswith("None ValueError") and "orders.import" in key for key in after)
    assert sum(key.endswith("ValueError") for key in after) == 2  # first try and the retry


def test_app_add_middleware_runs_in_run_until_idle_with_the_same_job_object(app):
    seen = []

    class Timer(Middleware):
        def before_job(self, job):
            seen.append(("before", job))

        def after_job(self, job, result, error):
            seen.append(("after", job, result, error))

    app.add_middleware(Timer())

    @app.task(topic="t", max_retries=0)
    def double(x):
        if x < 0:
            raise ValueError("negative")
        return 2 * x

    ok, bad = double.send(2), double.send(-1)
    run_until_idle(app)
    by_id = {}
    for event in seen:
        by_id.setdefault(event[1].id, []).append(event)
    (b1, a1), (b2, a2) = by_id[ok.id], by_id[bad.id]
    assert b1[1] is a1[1] and a1[2:] == (4, None)
    assert a2[2] is None and isinstance(a2[3], ValueError) and b2[1] is a2[1]
    assert a1[1].task.endswith("double")


def test_a_failing_hook_is_logged_and_the_job_still_settles(app, caplog):
    class Broken(Middleware):
        def before_job(self, job):
            raise RuntimeError("hook broke")

    app.add_middleware(Broken())

    @app.task(topic="t")
    def ok():
        return 1

    job = ok.send()
    counts = run_until_idle(app)
    assert counts.processed == 1 and job.result(timeout=1) == 1
    assert "hook broke" in caplog.text


def test_app_takes_middleware_in_its_constructor(client):
    m = Middleware()
    assert App(client, middleware=[m]).middleware == [m]
