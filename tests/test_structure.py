"""The shape of the package: no import cycle, layers that stay apart, a wheel without the lab.

The imports are read with `ast` from the source (nothing is imported): module-level ones,
those inside functions and those under `if TYPE_CHECKING:` alike, since each is a dependency
of one module on another.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.support.daemon import ROOT

PACKAGE = ROOT / "waltd"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    """Every module of waltd/ by dotted name (a package by its __init__.py)."""
    return {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _imported(name: str, path: Path, known: set[str]) -> set[str]:
    """The waltd modules that module `name` (file `path`) imports, wherever the import stands."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            # `from pkg import x` imports the module pkg.x when there is one, else pkg
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                for alias in node.names
            ]
        else:
            continue
        for target in targets:
            # `import waltd.a.b` names a module of waltd even when written as an attribute path
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imported(name, path, known) for name, path in modules.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of `graph` (its modules in order, the first repeated), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def _reachable(graph: dict[str, set[str]], start: str) -> dict[str, list[str]]:
    """Every module `start` imports directly or not, with one import chain leading to it."""
    chains = {start: [start]}
    todo = [start]
    while todo:
        current = todo.pop()
        for nxt in sorted(graph[current]):
            if nxt not in chains:
                chains[nxt] = [*chains[current], nxt]
                todo.append(nxt)
    return chains


def test_the_import_walk_sees_every_kind_of_import(tmp_path: Path) -> None:
    # a cycle is only as visible as the walk is complete
    sample = tmp_path / "sample.py"
    sample.write_text(
        "from typing import TYPE_CHECKING\n"
        "from waltd import db\n"
        "from . import log\n"
        "if TYPE_CHECKING:\n"
        "    from waltd.api.server import App\n"
        "def later():\n"
        "    import waltd.events.bus\n"
        "    from .registries import anything\n"
    )
    known = {"waltd", "waltd.db", "waltd.log", "waltd.events", "waltd.registries", "waltd.api"}
    known |= {"waltd.api.server"}
    assert _imported("waltd.sample", sample, known) == {
        "waltd.db",
        "waltd.log",
        "waltd.api.server",
        "waltd.events",
        "waltd.registries",
    }


def test_no_import_cycle_in_waltd() -> None:
    cycle = _cycle(_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_provision_imports_neither_the_api_nor_the_cli() -> None:
    graph = _graph()
    wrong = {}
    for module in (m for m in graph if m.startswith("waltd.provision")):
        for target, chain in _reachable(graph, module).items():
            if target.startswith(("waltd.api", "waltd.cli")):
                wrong[target] = " -> ".join(chain)
    assert not wrong, "provision reaches the API or the CLI:\n" + "\n".join(wrong.values())


def test_only_the_entry_point_imports_the_daemon() -> None:
    graph = _graph()
    importers = sorted(m for m, targets in graph.items() if "waltd.daemon" in targets)
    assert importers == ["waltd.__main__"]


def test_the_wheel_holds_waltd_and_not_the_lab(tmp_path: Path) -> None:
    """Built offline from a copy of the sources (a build writes next to them)."""
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    ignore = shutil.ignore_patterns("__pycache__")
    for name in ("waltd", "lab"):
        shutil.copytree(ROOT / name, source / name, ignore=ignore)
    argv = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
    built = subprocess.run(
        [*argv, "--no-index", "-w", str(tmp_path / "out"), str(source)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if built.returncode != 0 and "invalid command 'bdist_wheel'" in built.stderr:
        pytest.fail("building a wheel needs the `wheel` package: run `make setup`")
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "out").glob("*.whl")
    top = {name.split("/")[0] for name in zipfile.ZipFile(wheel).namelist()}
    assert "waltd" in top and "waltd/__main__.py" in zipfile.ZipFile(wheel).namelist()
    assert "lab" not in top, sorted(top)
