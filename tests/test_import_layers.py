"""The package's architecture, checked: the import-linter contracts of .importlinter (layers,
rclpy only in the ROS layer, no torch in the world generator) and no import cycle between
the subpackages or modules of any package. Imports inside functions count too."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grimp

REPO = Path(__file__).resolve().parents[1]


def test_import_contracts_hold():
    lint = Path(sys.executable).with_name("lint-imports")
    proc = subprocess.run([str(lint), "--config", str(REPO / ".importlinter")], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "kept, 0 broken." in proc.stdout, proc.stdout


def _cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the directed graph `edges`, or None (depth-first search)."""
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (found := visit(node)):
            return found
    return None


def cycles_between_children(graph: grimp.ImportGraph) -> dict[str, list[str]]:
    """For every package, a cycle among its children (subpackages and modules, each with
    everything inside it), where there is one."""
    out = {}
    packages = {m for m in graph.modules if graph.find_children(m)}
    for package in sorted(packages):
        children = graph.find_children(package)
        owner = {}
        for child in children:
            owner[child] = child
            for d in graph.find_descendants(child):
                owner[d] = child
        edges: dict[str, set[str]] = {c: set() for c in children}
        for module, child in owner.items():
            for imported in graph.find_modules_directly_imported_by(module):
                target = owner.get(imported)
                if target is not None and target != child:
                    edges[child].add(target)
        if cycle := _cycle(edges):
            out[package] = cycle
    return out


def test_no_import_cycle_between_subpackages():
    graph = grimp.build_graph("dima_planner")
    assert cycles_between_children(graph) == {}


def test_the_cycle_check_finds_a_cycle():
    graph = grimp.ImportGraph()
    for m in ("pkg", "pkg.a", "pkg.a.x", "pkg.b", "pkg.c"):
        graph.add_module(m)
    graph.add_import(importer="pkg.a.x", imported="pkg.b")
    graph.add_import(importer="pkg.b", imported="pkg.c")
    assert cycles_between_children(graph) == {}
    graph.add_import(importer="pkg.c", imported="pkg.a")
    assert cycles_between_children(graph) == {"pkg": ["pkg.a", "pkg.b", "pkg.c", "pkg.a"]}
