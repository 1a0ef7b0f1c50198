"""Layout rules of the code that a reader relies on: every Lua script lives in
redismq/scripts/ and is loaded through the one registry (redismq/scripts.py)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LUA = re.compile(r"redis\.call\(|register_script\(|\.eval\(")


def lua_outside_scripts(root: Path) -> list[str]:
    """`file:line` of Lua text or script registration in Python outside redismq/scripts.py."""
    found = []
    for package in ("redismq", "workers", "cli"):
        for path in sorted((root / package).rglob("*.py")):
            if path == root / "redismq" / "scripts.py":
                continue
            for n, line in enumerate(path.read_text().splitlines(), 1):
                if LUA.search(line):
                    found.append(f"{path.relative_to(root)}:{n}")
    return found


def test_lua_is_found_outside_the_scripts_folder(tmp_path: Path) -> None:
    for package in ("redismq", "workers", "cli"):
        (tmp_path / package).mkdir()
    (tmp_path / "workers" / "w.py").write_text(
        'X = """\nreturn redis.call(\'GET\', KEYS[1])\n"""\n'
    )
    assert lua_outside_scripts(tmp_path) == ["workers/w.py:2"]


def test_every_lua_script_is_in_redismq_scripts() -> None:
    assert lua_outside_scripts(ROOT) == []
