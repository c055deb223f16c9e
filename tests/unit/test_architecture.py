"""The import direction and the one-door-per-outside-system rule, checked on every module of src/colo.

spec -> memory/plan -> gpu, supervise -> api, cli, bench, render. Lazy imports inside functions count too.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "colo"

LAYER = {
    "errors": 0, "units": 0, "files": 0, "clock": 0,
    "spec": 1,
    "memory": 2, "plan": 2,
    "gpu": 3, "launch": 3, "supervise": 3, "profiling": 3, "modelserver": 3,
    "api": 4, "cli": 4, "bench": 4, "render": 4,
}
# Same-layer imports that are part of the design.
ALLOWED_SIDEWAYS = {
    ("supervise", "gpu"), ("profiling", "gpu"), ("profiling", "memory"), ("modelserver", "gpu"), ("memory", "plan"),
    ("launch", "gpu"), ("launch", "modelserver"),  # the launcher pre-imports the built-in agent
    ("supervise", "launch"), ("profiling", "launch"),  # agents and profiled commands start through one runner
    ("supervise", "modelserver"), ("cli", "api"), ("cli", "bench"), ("cli", "render"),
    ("render", "cli"), ("bench", "api"),
}
NEVER = {("gpu", "supervise"), ("launch", "supervise"), ("profiling", "supervise"), ("gpu", "api"), ("gpu", "cli"), ("supervise", "api"), ("supervise", "cli"),
         ("plan", "memory"), ("api", "cli")}
DOORS = {"pynvml": {"gpu/nvml.py"}, "sqlite3": {"supervise/store.py"}, "psutil": {"gpu/procs.py"}}


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def _area(rel: Path) -> str:
    return rel.parts[0].removesuffix(".py") if rel.parts else ""


def test_import_direction() -> None:
    problems = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC)
        src_area = _area(rel)
        if src_area not in LAYER:
            if src_area != "__init__":
                problems.append(f"{rel}: package {src_area!r} has no layer in this test")
            continue
        for name in _imports(path):
            if not name.startswith("colo."):
                continue
            dst_area = name.split(".")[1]
            if dst_area == src_area or dst_area not in LAYER:
                continue
            pair = (src_area, dst_area)
            if pair in NEVER or (
                LAYER[dst_area] > LAYER[src_area]
                or (LAYER[dst_area] == LAYER[src_area] > 0 and pair not in ALLOWED_SIDEWAYS)
            ):
                problems.append(f"{rel} imports {name} ({src_area} -> {dst_area})")
    assert not problems, "\n".join(problems)


def test_one_door_per_outside_system() -> None:
    problems = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        for name in _imports(path):
            top = name.split(".")[0]
            if top in DOORS and rel not in DOORS[top]:
                problems.append(f"{rel} imports {top}; only {sorted(DOORS[top])} may")
    assert not problems, "\n".join(problems)


def test_plan_is_pure() -> None:
    banned = {"os", "time", "random", "subprocess", "socket", "datetime", "pathlib", "io", "shutil"}
    for path in sorted((SRC / "plan").rglob("*.py")):
        bad = {n.split(".")[0] for n in _imports(path)} & banned
        assert not bad, f"{path.name} imports {bad}: plan must be pure"
