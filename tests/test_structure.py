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


DOCS = ["README.md", "docs/architecture.md", "docs/decisions.md", "docs/security.md"]
FILE = re.compile(r"`([\w./-]+\.(?:py|lua|md))`|\b([A-Z][A-Z_]*\.md)\b")
KEY = re.compile(r"`(?:rmq:)?([a-z_]+):<id>`")


def test_the_docs_name_only_files_that_exist() -> None:
    missing = []
    for doc in DOCS:
        for quoted, bare in FILE.findall((ROOT / doc).read_text()):
            name = quoted or bare
            candidates = [ROOT / name, ROOT / "redismq" / name, ROOT / "redismq/scripts" / name]
            if not any(c.exists() for c in candidates):
                missing.append(f"{doc}: {name}")
    assert missing == []


def test_the_docs_name_keys_as_keys_py_builds_them() -> None:
    keys = (ROOT / "redismq" / "keys.py").read_text()
    unknown = [
        f"{doc}: {name}:<id>"
        for doc in DOCS
        for name in KEY.findall((ROOT / doc).read_text())
        if f":{name}:{{" not in keys
    ]
    assert unknown == []
