"""Issue 14, item 8: the pytest plugin runs a user's tests against an existing server given
by `--redismq-url` (or $REDISMQ_TEST_URL), flushing only that URL's database."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import ROOT

USER_TESTS = """
import os

def test_uses_the_given_server(redismq_url, redismq_app):
    assert redismq_url == os.environ["EXPECTED_URL"]

    @redismq_app.task(topic="t")
    def double(x):
        return 2 * x

    from redismq.testing import run_until_idle
    job = double.send(21)
    run_until_idle(redismq_app)
    assert job.result(timeout=5) == 42
    redismq_app.client.meta.set("left-by-the-test", "1")
"""


def run_user_tests(tmp_path: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    (tmp_path / "test_user.py").write_text(textwrap.dedent(USER_TESTS))
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args, "test_user.py"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("how", ["option", "env"])
def test_plugin_uses_the_users_server_and_flushes_only_its_database(server, tmp_path, how):
    target = server.url.rsplit("/", 1)[0] + "/5"
    admin = server.client()
    admin.select(5)
    admin.set("old", "data")  # flushed: the plugin empties the database it was given
    other = server.client()  # db 0 of the same server: left alone
    other.set("kept", "yes")
    args = ("--redismq-url", target) if how == "option" else ()
    env = {"EXPECTED_URL": target}
    if how == "env":
        env["REDISMQ_TEST_URL"] = target
    done = run_user_tests(tmp_path, *args, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert admin.get("left-by-the-test") == b"1" and admin.get("old") is None
    assert other.get("kept") == b"yes"
    admin.close()
    other.close()


def test_a_bad_redismq_url_is_one_clear_error(tmp_path):
    done = run_user_tests(tmp_path, "--redismq-url", "ftp://nowhere", env={"EXPECTED_URL": ""})
    assert done.returncode == 4  # a usage error, before any test ran
    assert "unsupported URL scheme" in done.stderr and "Traceback" not in done.stderr
