"""The import-cycle check of `make lint` (tools/import_cycles.py) finds cycles, and the
project has none."""

from __future__ import annotations

from pathlib import Path

from tools.import_cycles import problems

ROOT = Path(__file__).resolve().parent.parent


def _package(root: Path, name: str, modules: dict[str, str]) -> None:
    (root / name).mkdir()
    (root / name / "__init__.py").write_text("")
    for module, text in modules.items():
        (root / name / f"{module}.py").write_text(text)


def test_a_module_level_cycle_fails(tmp_path: Path) -> None:
    _package(tmp_path, "redismq", {"a": "from .b import x\n", "b": "from . import a\nx = 1\n"})
    assert problems(tmp_path, ["redismq"]) == ["runtime import cycle: redismq.a <-> redismq.b"]


def test_a_cycle_through_a_deferred_import_fails_in_the_library(tmp_path: Path) -> None:
    _package(
        tmp_path,
        "redismq",
        {"a": "import redismq.b\n", "b": "def f():\n    from redismq.a import g\n"},
    )
    assert problems(tmp_path, ["redismq"]) == [
        "import cycle through a deferred import: redismq.a <-> redismq.b"
    ]


def test_imports_for_type_checking_make_no_cycle(tmp_path: Path) -> None:
    _package(
        tmp_path,
        "redismq",
        {
            "a": "from .b import x\n",
            "b": "import typing\nif typing.TYPE_CHECKING:\n    from .a import y\nx = 1\n",
        },
    )
    assert problems(tmp_path, ["redismq"]) == []


def test_the_project_has_no_import_cycle() -> None:
    assert problems(ROOT, ["redismq", "workers", "cli"]) == []


def test_the_library_importing_the_runtime_or_the_command_fails(tmp_path: Path) -> None:
    _package(tmp_path, "redismq", {"a": "def f():\n    from redismq.workers.w import x\n"})
    _package(tmp_path, "workers", {"w": "from redismq.cli.c import y\nx = 1\n"})
    _package(tmp_path, "cli", {"c": "from redismq.workers import w\ny = 2\n"})
    assert problems(tmp_path, ["redismq", "workers", "cli"]) == [
        "redismq.a imports redismq.workers.w: redismq may not import redismq.workers",
        "redismq.workers.w imports redismq.cli.c: redismq.workers may not import redismq.cli",
        "runtime import cycle: redismq.cli.c <-> redismq.workers.w",
    ]
