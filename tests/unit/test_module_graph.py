"""The shape of the module graph of src/colo: no import circle, and every module imported by some test.

Both read the source with ``ast`` (nothing is imported), so lazy imports inside functions count as much as
module-level ones. An import names a module when it is ``import colo.a.b``, ``from colo.a.b import x`` (module
``colo.a.b``) or ``from colo.a import b`` where ``b`` is a module (module ``colo.a.b``; when ``b`` is a name
inside ``colo/a/__init__.py``, the package ``colo.a``).
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src" / "colo"
TESTS = ROOT / "tests"


@cache
def modules() -> dict[str, Path]:
    """Every module of src/colo by dotted name (a package by its own name, for its ``__init__.py``)."""
    out = {}
    for path in SRC.rglob("*.py"):
        parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def imported_modules(path: Path) -> set[str]:
    """The modules of src/colo that ``path`` imports (anywhere in the file)."""
    known = modules()
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name in known}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                if sub in known:
                    out.add(sub)
                elif node.module in known:
                    out.add(node.module)
    return out


def import_graph() -> dict[str, set[str]]:
    return {name: imported_modules(path) - {name} for name, path in modules().items()}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work: list[tuple[str, Iterable[str]]] = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(iter(children), None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
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
                    found.append(sorted(component))
    return found


def test_circles_finds_a_circle_and_only_the_circle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert circles(graph) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_no_import_circle_between_modules() -> None:
    """A circle means neither module can be understood (or imported) without the other: cut it by moving
    what both need into a third module (as colo.bench.format did for the two bench reports)."""
    found = circles(import_graph())
    assert not found, "import circles (lazy imports count):\n" + "\n".join(" -> ".join(c) for c in found)


# --- every module imported by a test ------------------------------------------------------------------------
#
# The rule: a module of src/colo is covered when some file under tests/ imports it by name (see the module
# docstring; at module level or inside a test), imports a name its package re-exports from it
# (``from colo.plan import plan`` covers colo.plan.planner), or imports a module under it (a package is
# covered by its modules). Reaching it only through another module does not count: a module nobody imports
# in a test is a module nobody wrote a test for.
#
# Modules merged without a test that imports them (round 2 landed together with this test). The list may only
# shrink: a module that gets its test must leave it (the test says so), and a new module comes with its test.
NOT_YET_TESTED: frozenset[str] = frozenset()


@cache
def reexports(package: str) -> dict[str, str]:
    """The names a package's ``__init__.py`` takes from its own modules: name -> module."""
    path = modules()[package]
    out = {}
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.ImportFrom) and node.module in modules() and node.level == 0:
            for alias in node.names:
                out[alias.asname or alias.name] = node.module
    return out


def imported_by_name(path: Path) -> set[str]:
    """:func:`imported_modules`, and for ``from colo.pkg import name`` the module of ``colo/pkg/__init__.py``
    that ``name`` comes from (a package's public surface is its modules' door)."""
    out = imported_modules(path)
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.module in modules() and modules()[node.module].name == "__init__.py":
            found = reexports(node.module)
            out |= {found[a.name] for a in node.names if a.name in found}
    return out


def covered_modules() -> set[str]:
    imported: set[str] = set()
    for path in TESTS.rglob("*.py"):
        imported |= imported_by_name(path)
    return {m for m in modules() if m in imported or any(i.startswith(m + ".") for i in imported)}


def test_every_module_is_imported_by_a_test() -> None:
    covered = covered_modules()
    untested = sorted(set(modules()) - covered - NOT_YET_TESTED)
    assert not untested, "modules no test imports (write a test that imports each):\n" + "\n".join(untested)
    done = sorted(NOT_YET_TESTED & covered)
    assert not done, "these have a test now: take them off NOT_YET_TESTED:\n" + "\n".join(done)
    gone = sorted(NOT_YET_TESTED - set(modules()))
    assert not gone, "these modules are gone: take them off NOT_YET_TESTED:\n" + "\n".join(gone)
