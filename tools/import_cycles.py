"""Fail on an import cycle or an import against the layers: `python tools/import_cycles.py
[FOLDER ...]` (`make lint`).

The folders cli/ and workers/ are installed as redismq.cli and redismq.workers (setuptools'
package-dir): the layers are redismq.cli -> redismq.workers -> the rest of redismq, which
imports neither (`redismq/__main__.py`, the command's entry point, excepted).
The import graph of redismq, workers and cli is read from the source with `ast`: an edge
for each `import`/`from ... import` of one of their modules. Imports at module level (run
when the module is first imported; `if TYPE_CHECKING:` blocks left out) make the runtime
graph, which must have no cycle at all. An import inside a function runs later and cannot
break an import, but a cycle through one still ties modules that need each other: that
fails too.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

Graph = dict[str, set[str]]
# Where each folder is installed (pyproject.toml's package-dir); others by their own name.
INSTALLED_AS = {"cli": "redismq.cli", "workers": "redismq.workers"}
# Which installed package may not import which.
FORBIDDEN = (
    ("redismq", "redismq.workers"),
    ("redismq", "redismq.cli"),
    ("redismq.workers", "redismq.cli"),
)
ENTRY_POINTS = {"redismq.__main__"}


def module_names(root: Path, package: str) -> dict[str, Path]:
    """Every module of the folder `package` (under `root`) by its installed dotted name; a
    package by its own name."""
    names = {}
    prefix = INSTALLED_AS.get(package, package).split(".")
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root / package).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(prefix + parts)] = path
    return names


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _layer(module: str) -> str:
    """The installed package a module belongs to, for the layers."""
    return next((p for p in ("redismq.cli", "redismq.workers") if _within(module, p)), "redismq")


def layer_problems(whole: Graph) -> list[str]:
    """One line per import against the layers."""
    return [
        f"{here} imports {target}: {_layer(here)} may not import {_layer(target)}"
        for here in sorted(whole)
        if here not in ENTRY_POINTS
        for target in sorted(whole[here])
        if (_layer(here), _layer(target)) in FORBIDDEN
    ]


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.Module) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Each import statement and whether it runs at import time (module level)."""

    def walk(
        nodes: list[ast.stmt], runtime: bool
    ) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
        for node in nodes:
            if isinstance(node, ast.Import | ast.ImportFrom):
                yield node, runtime
            elif isinstance(node, ast.If) and _is_type_checking(node.test):
                yield from walk(node.orelse, runtime)
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                yield from walk(node.body, False)
            else:
                for child in ast.iter_child_nodes(node):
                    if isinstance(child, ast.stmt):
                        yield from walk([child], runtime)

    yield from walk(tree.body, True)


def _targets(
    node: ast.Import | ast.ImportFrom, here: str, is_package: bool, known: set[str]
) -> set[str]:
    """The modules of `known` that one import statement in module `here` imports."""
    if isinstance(node, ast.Import):
        found = (_longest_known(alias.name, known) for alias in node.names)
        return {name for name in found if name is not None}
    base = node.module or ""
    if node.level:
        package = here if is_package else here.rpartition(".")[0]
        for _ in range(node.level - 1):
            package = package.rpartition(".")[0]
        base = f"{package}.{base}" if base else package
    found: set[str] = set()
    for alias in node.names:
        sub = f"{base}.{alias.name}"
        if sub in known:  # `from . import cluster`: the submodule itself
            found.add(sub)
        elif (mod := _longest_known(base, known)) is not None:
            found.add(mod)
    return found


def _longest_known(name: str, known: set[str]) -> str | None:
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


def import_graphs(root: Path, packages: list[str]) -> tuple[Graph, Graph]:
    """The runtime graph (module-level imports) and the whole graph (with deferred ones)."""
    modules: dict[str, Path] = {}
    for package in packages:
        modules.update(module_names(root, package))
    known = set(modules)
    runtime: Graph = {m: set() for m in modules}
    whole: Graph = {m: set() for m in modules}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        for node, at_import in _imports(tree):
            for target in _targets(node, name, path.name == "__init__.py", known):
                if target == name:
                    continue
                whole[name].add(target)
                if at_import:
                    runtime[name].add(target)
    return runtime, whole


def cycles(graph: Graph) -> list[list[str]]:
    """The strongly connected components of more than one module, each as sorted names."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def problems(root: Path, packages: list[str]) -> list[str]:
    """One line per import cycle, and per import against the layers."""
    runtime, whole = import_graphs(root, packages)
    found = layer_problems(whole)
    found += [f"runtime import cycle: {' <-> '.join(c)}" for c in cycles(runtime)]
    found += [
        f"import cycle through a deferred import: {' <-> '.join(c)}"
        for c in cycles(whole)
        if c not in cycles(runtime)
    ]
    return found


def main(argv: list[str]) -> int:
    root = Path(__file__).resolve().parent.parent
    found = problems(root, argv or ["redismq", "workers", "cli"])
    for line in found:
        print(line)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
