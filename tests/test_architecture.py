"""The folder tree is the architecture: imports point one way and form no cycle.

Layers, lowest first (a module may import its own layer's earlier members and any lower layer):
  foundation  orchestrator.core
  worker      trainables                     (code that runs inside a Ray Train worker)
  stages      orchestrator.data → teachers, students → labels; orchestrator.tracking
  drivers     orchestrator.runtime, preflight → trial, models → single_run, sweep
  entry       orchestrator.cli, the orchestrator package (its Python API)
Imports inside functions count too: a lazy import is still a dependency.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("orchestrator", "trainables")

# (prefix, rank): the longest matching prefix decides. Stages get ranks in their allowed import order;
# tracking sits beside them and imports no other stage.
LAYERS = [
    ("orchestrator.core", 0),
    ("trainables", 1),
    ("orchestrator.data", 2), ("orchestrator.teachers", 3), ("orchestrator.students", 3), ("orchestrator.labels", 4),
    ("orchestrator.tracking", 2),
    ("orchestrator.runtime", 5), ("orchestrator.preflight", 5), ("orchestrator.trial", 6), ("orchestrator.models", 6),
    ("orchestrator.single_run", 7),
    ("orchestrator.sweep", 7),
    ("orchestrator.cli", 8), ("orchestrator", 9),
]
# Pairs of the same rank that must not meet (siblings are independent).
INDEPENDENT = [("orchestrator.tracking", "orchestrator.data"), ("orchestrator.single_run", "orchestrator.sweep"),
               ("orchestrator.trial", "orchestrator.models"), ("orchestrator.teachers", "orchestrator.students")]


def layer_of(module: str) -> tuple[str, int]:
    matches = [(p, r) for p, r in LAYERS if module == p or module.startswith(p + ".")]
    return max(matches, key=lambda m: len(m[0]))


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_imports(path: Path) -> set[str]:
    """Every project module `path` imports, at module level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)  # `from pkg import module`
    return {m for m in found if m.split(".")[0] in PACKAGES}


def import_graph() -> dict[str, set[str]]:
    files = [p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")]
    modules = {module_name(p): p for p in files}
    graph = {}
    for name, path in modules.items():
        # `from pkg import Name` adds "pkg.Name": keep only real modules (or the package itself)
        graph[name] = {m for m in project_imports(path) if m in modules and m != name}
    return graph


def backward_imports(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for source, targets in graph.items():
        (s_prefix, s_rank) = layer_of(source)
        for target in targets:
            (t_prefix, t_rank) = layer_of(target)
            if t_rank > s_rank or (t_rank == s_rank and t_prefix != s_prefix
                                   and ((s_prefix, t_prefix) in INDEPENDENT or (t_prefix, s_prefix) in INDEPENDENT)):
                bad.append(f"{source} ({s_prefix}) imports {target} ({t_prefix})")
    return sorted(bad)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import cycle found by depth-first search (one representative path each)."""
    found, state, stack = [], {}, []

    def visit(node: str) -> None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                found.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


def test_every_module_has_a_layer():
    assert all(layer_of(m) for m in import_graph())


def test_imports_point_one_way():
    assert backward_imports(import_graph()) == []


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_workers_import_only_the_foundation():
    graph = import_graph()
    outside = {f"{s} -> {t}" for s, ts in graph.items() if s.startswith("trainables")
               for t in ts if not t.startswith(("trainables", "orchestrator.core"))}
    assert outside == set()


@pytest.mark.parametrize("graph, problem", [
    ({"orchestrator.core.config": {"orchestrator.sweep.driver"}, "orchestrator.sweep.driver": set()}, "backward"),
    ({"trainables.streams": {"orchestrator.labels.store"}, "orchestrator.labels.store": set()}, "backward"),
    ({"orchestrator.tracking.client": {"orchestrator.data.plan"}, "orchestrator.data.plan": set()}, "backward"),
    ({"orchestrator.cli.parser": {"orchestrator.cli.commands"},
      "orchestrator.cli.commands": {"orchestrator.cli.parser"}}, "cycle"),
])
def test_the_checks_catch_what_they_guard_against(graph, problem):
    assert (backward_imports(graph) if problem == "backward" else cycles(graph))


def test_the_python_api_names_resolve():
    import orchestrator

    assert {"run_sweep", "SweepRequest", "run_single", "TrainRequest", "write_report"} <= set(orchestrator.__all__)
    assert all(getattr(orchestrator, name) is not None for name in orchestrator.__all__)
