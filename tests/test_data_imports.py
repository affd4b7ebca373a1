"""The data modules form no import cycle: each imports first, and no import (even inside a function) closes a loop."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import regionspot.data

DATA = Path(regionspot.data.__file__).parent
MODULES = sorted(f"regionspot.data.{path.stem}" for path in DATA.glob("*.py") if path.stem != "__init__")


def _imports_of(path: Path) -> set[str]:
    """The regionspot.data modules a file imports anywhere in it (top level or inside a function)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in found if name == "regionspot.data" or name in MODULES}


def _graph() -> dict[str, set[str]]:
    graph = {name: _imports_of(DATA / f"{name.rsplit('.', 1)[1]}.py") for name in MODULES}
    graph["regionspot.data"] = _imports_of(DATA / "__init__.py")
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of the graph, as the modules along it, or None."""
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> list[str] | None:
        if node in path:
            return [*path[path.index(node) :], node]
        if node in done:
            return None
        for target in sorted(graph.get(node, ())):
            if (cycle := visit(target, [*path, node])) is not None:
                return cycle
        done.add(node)
        return None

    return next((cycle for node in sorted(graph) if (cycle := visit(node, [])) is not None), None)


def test_no_import_cycle_among_the_data_modules():
    cycle = _cycle(_graph())
    assert cycle is None, f"import cycle: {' -> '.join(cycle)}"


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


# Each module first, with no regionspot module loaded before it (third-party ones stay: torch would cost seconds each).
_IMPORT_EACH_ALONE = """
import importlib, sys
for name in sys.argv[1:]:
    for loaded in [m for m in sys.modules if m == "regionspot" or m.startswith("regionspot.")]:
        del sys.modules[loaded]
    importlib.import_module(name)
"""


def test_each_data_module_imports_first_in_a_fresh_interpreter():
    run = subprocess.run([sys.executable, "-c", _IMPORT_EACH_ALONE, *MODULES], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
