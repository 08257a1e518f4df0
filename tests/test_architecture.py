"""The architecture as the code has it: no import cycles among repsub's modules (function-level imports
included), few modules at the package root, and the import-linter contracts (pyproject.toml) kept."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def graph():
    return grimp.build_graph("repsub", cache_dir=None)


def strongly_connected(graph) -> list[list[str]]:
    """Tarjan's algorithm over the module graph: the groups of modules that import each other in a circle."""
    modules = sorted(graph.modules)
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(module):
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for imported in sorted(graph.find_modules_directly_imported_by(module)):
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in on_stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == module:
                    break
            groups.append(sorted(group))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for module in modules:
        if module not in index:
            visit(module)
    return [group for group in groups if len(group) > 1]


def test_the_graph_sees_function_level_imports(graph):
    # analysis.run imports analysis.layers inside a method only: the graph must count it.
    assert "repsub.analysis.layers" in graph.find_modules_directly_imported_by("repsub.analysis.run")


def test_no_import_cycles(graph):
    cycles = strongly_connected(graph)
    assert cycles == [], "modules that import each other in a circle: " + "; ".join(map(" <-> ".join, cycles))


def test_cycle_finder_finds_a_cycle():
    class Toy:
        modules = {"a", "b", "c", "d"}
        edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}

        def find_modules_directly_imported_by(self, module):
            return self.edges.get(module, set())

    assert strongly_connected(Toy()) == [["a", "b", "c"]]


def test_few_modules_at_the_package_root():
    root = sorted(p.name for p in (ROOT / "repsub").glob("*.py"))
    assert len(root) <= 6, root


def test_import_linter_contracts_are_kept():
    result = subprocess.run(
        [str(Path(sys.executable).with_name("lint-imports")), "--no-cache"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout
