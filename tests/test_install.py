"""A clean install: only `redismq` is importable at the top level (the runtime and the
command are redismq.workers and redismq.cli), `python -m redismq` is the command, and a
project with packages of its own named `workers` or `cli` runs a worker pool."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

from redismq import Client

ROOT = Path(__file__).resolve().parent.parent


def test_the_wheel_installs_one_top_level_package(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True,
        timeout=300,
    )
    [wheel] = tmp_path.glob("*.whl")
    assert wheel.name.startswith("redismq_streams-")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"redismq"}, tops
    assert "redismq/cli/main.py" in names and "redismq/workers/supervisor.py" in names
    assert "redismq/scripts/settle.lua" in names


def _outside(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run Python in a project folder of the user's, away from this repository."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(tmp_path)
    return subprocess.run(
        [sys.executable, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )


def test_python_dash_m_redismq_is_the_command(tmp_path: Path) -> None:
    done = _outside(tmp_path, "-m", "redismq", "--help")
    assert done.returncode == 0, done.stderr
    assert "worker" in done.stdout and "status" in done.stdout


def test_a_project_with_its_own_workers_package_runs_a_pool(tmp_path: Path, url: str) -> None:
    for own in ("workers", "cli"):
        (tmp_path / own).mkdir()
        (tmp_path / own / "__init__.py").write_text("MINE = True\n")
    (tmp_path / "myapp.py").write_text(
        textwrap.dedent(
            """
            import workers  # the project's own package, not redismq's
            from redismq import App

            app = App()

            @app.task(topic="own")
            def double(n: int) -> int:
                assert workers.MINE
                return n * 2
            """
        )
    )
    client = Client(url)
    sys.path.insert(0, str(tmp_path))
    try:
        import myapp  # type: ignore[import-not-found]

        myapp.app.connect(client)
        jobs = [myapp.double.send(i) for i in range(10)]
    finally:
        sys.path.remove(str(tmp_path))
    done = _outside(
        tmp_path,
        "-m",
        "redismq",
        "worker",
        "myapp:app",
        "--url",
        url,
        "--processes",
        "2",
        "--burst",
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert [j.result(timeout=5) for j in jobs] == [i * 2 for i in range(10)]
