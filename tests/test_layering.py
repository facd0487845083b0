"""The house rules, read from the source: imports run one way (flows -> tasks -> slam_core -> data_catalog)
and no two modules of the repository import each other, directly or around a circle.

Imports are read with `ast`, nothing is executed. How each kind of import counts:
- module-level imports (also inside `try:`/`if` at module level and class bodies) count everywhere;
- function-level imports (inside a def) count too, for the layer rule and for cycles: deferring an import
  only delays when the dependency loads, so a circle closed by a lazy import is still a circle (the circles
  of issue #18 were all of that kind);
- imports under `if TYPE_CHECKING:` never run; they count for the layer rule only (a type may not come from
  a higher room either) and are left out of the cycle graph;
- `from pkg.mod import name` depends on `pkg.mod.name` when that is a module, else on `pkg.mod`; importing a
  submodule is not counted as depending on its package's `__init__` (which Python also runs), otherwise every
  package that re-exports its submodules would be a circle with each of them.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Rooms from the bottom up: a module may import its own room and the rooms below it, never one above.
ROOMS = ("data_catalog", "slam_core", "tasks", "flows")
# Third-party packages a room must not import at all.
FORBIDDEN_EXTERNAL = {"data_catalog": ("prefect", "prefect_dask"), "slam_core": ("prefect", "prefect_dask")}

# The circles issue #18 found. Each has a test of its own, so a report shows which are gone.
ISSUE_18_CIRCLES = {
    "cli-subcommands": ("flows.cli", "flows.cli_data", "flows.cli_synth"),
    "synth-backend-factory": ("slam_core.synth.base", "slam_core.synth.espeak", "slam_core.synth.kokoro_tts"),
    "synth-shard-registry": ("slam_core.synth.shards", "slam_core.synth.jobs"),
    "published-eval-layouts": ("slam_core.corpora.eval_sets", "slam_core.eval.published"),
}
# Circles still present when this test was last updated, with who removes them. Empty when the house has
# none; `test_no_import_cycles` fails on any circle not listed here, and a listed one that is gone shows as
# XPASS (then delete its entry).
KNOWN_CIRCLES: dict[str, str] = {}


@dataclass(frozen=True)
class Import:
    source: str  # importing module
    target: str  # imported name, absolute (may be third-party)
    line: int
    level: str  # "module", "function" or "type-checking"


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def repo_modules() -> dict[str, Path]:
    return {module_name(p): p for room in ROOMS for p in sorted((REPO / room).rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _absolute(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(module: str, path: Path) -> Iterator[Import]:
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"

    def visit(node: ast.AST, level: str) -> Iterator[Import]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                yield from visit(child, "function" if level == "module" else level)
            elif isinstance(child, ast.If) and _is_type_checking(child.test):
                for stmt in child.body:
                    yield from visit(ast.Module(body=[stmt], type_ignores=[]), "type-checking")
                for stmt in child.orelse:
                    yield from visit(ast.Module(body=[stmt], type_ignores=[]), level)
            elif isinstance(child, ast.Import):
                yield from (Import(module, alias.name, child.lineno, level) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = _absolute(module, is_package, child)
                yield from (Import(module, f"{base}.{alias.name}" if alias.name != "*" else base, child.lineno, level)
                            for alias in child.names)
            else:
                yield from visit(child, level)

    yield from visit(tree, "module")


def resolve(target: str, modules: dict[str, Path]) -> str | None:
    """The repository module a dotted import name lands in (longest existing prefix), or None if external."""
    parts = target.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules:
            return candidate
    return None


def room_of(module: str) -> str:
    return module.split(".", 1)[0]


@pytest.fixture(scope="module")
def graph() -> dict[str, list[Import]]:
    modules = repo_modules()
    return {m: list(imports_of(m, p)) for m, p in modules.items()}


def dependency_graph(graph: dict[str, list[Import]]) -> dict[str, set[str]]:
    """Module -> repository modules it imports (module- and function-level; not type-checking)."""
    modules = {m: Path() for m in graph}
    edges: dict[str, set[str]] = {m: set() for m in graph}
    for module, imports in graph.items():
        for imp in imports:
            target = resolve(imp.target, modules)
            if target is not None and target != module and imp.level != "type-checking":
                edges[module].add(target)
    return edges


def strongly_connected(edges: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm (iterative); returns the components with more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))
    return components


def cycle_path(edges: dict[str, set[str]], component: list[str]) -> list[str]:
    """One concrete circle through the component's first module, for the failure message."""
    start, members = component[0], set(component)
    parents: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for node in frontier:
            for child in sorted(edges[node] & members):
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(parents[path[-1]])
                    return [start, *reversed(path[:-1]), start] if len(path) > 1 else [start, node, start]
                if child not in parents:
                    parents[child] = node
                    nxt.append(child)
        frontier = nxt
    return component


def test_every_room_is_found(graph):
    assert {room_of(m) for m in graph} == set(ROOMS)
    assert "slam_core.synth.shards" in graph and "flows.cli" in graph


def test_imports_never_go_up_a_room(graph):
    modules = {m: Path() for m in graph}
    upward = []
    for module, imports in graph.items():
        rank = ROOMS.index(room_of(module))
        for imp in imports:
            target = resolve(imp.target, modules)
            if target is not None and ROOMS.index(room_of(target)) > rank:
                upward.append(f"{module}:{imp.line} imports {target} ({imp.level} level)")
            top = imp.target.split(".", 1)[0]
            if target is None and top in FORBIDDEN_EXTERNAL.get(room_of(module), ()):
                upward.append(f"{module}:{imp.line} imports {top} ({imp.level} level)")
    assert not upward, "imports must run flows -> tasks -> slam_core -> data_catalog:\n" + "\n".join(upward)


def test_no_import_cycles(graph):
    edges = dependency_graph(graph)
    circles = strongly_connected(edges)
    unexpected = [c for c in circles if not any(set(ISSUE_18_CIRCLES[k]) <= set(c) for k in KNOWN_CIRCLES)]
    assert not unexpected, "import circles between repository modules:\n" + "\n".join(
        " -> ".join(cycle_path(edges, c)) + f"   (component: {', '.join(c)})" for c in unexpected)


@pytest.mark.parametrize("name", [
    pytest.param(name, marks=pytest.mark.xfail(reason=KNOWN_CIRCLES[name], strict=False))
    if name in KNOWN_CIRCLES else name for name in sorted(ISSUE_18_CIRCLES)])
def test_issue_18_circle_is_gone(graph, name):
    edges = dependency_graph(graph)
    members = set(ISSUE_18_CIRCLES[name])
    still = [c for c in strongly_connected(edges) if len(members & set(c)) > 1]
    assert not still, f"circle '{name}' is back: " + " -> ".join(cycle_path(edges, still[0]))


def test_the_checker_sees_lazy_and_relative_imports(tmp_path):
    """The parser itself: a function-level import makes an edge, TYPE_CHECKING imports do not, relative
    imports resolve against the package, and a planted circle is found with its path."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import c\n"
                              "def f():\n    from .b import g\n")
    (pkg / "b.py").write_text("import pkg.a\ndef g():\n    pass\n")
    (pkg / "c.py").write_text("from pkg.a import f\n")
    found = {}
    for path in sorted(pkg.glob("*.py")):
        name = "pkg" if path.stem == "__init__" else f"pkg.{path.stem}"
        found[name] = list(imports_of(name, path))
    levels = {(i.source, i.target): i.level for imps in found.values() for i in imps}
    assert levels[("pkg.a", "pkg.c")] == "type-checking"
    assert levels[("pkg.a", "pkg.b.g")] == "function"
    assert levels[("pkg.b", "pkg.a")] == "module"
    edges = dependency_graph(found)
    assert edges["pkg.a"] == {"pkg.b"} and edges["pkg.c"] == {"pkg.a"}
    assert strongly_connected(edges) == [["pkg.a", "pkg.b"]]
    assert cycle_path(edges, ["pkg.a", "pkg.b"]) == ["pkg.a", "pkg.b", "pkg.a"]
