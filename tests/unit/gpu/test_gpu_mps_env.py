"""The MPS environment is built in one place: no module but ``colo/gpu/mps/env.py`` spells a ``CUDA_MPS_*`` name
in code.

Allowed elsewhere: docstrings and comments, ``help=``/``description=`` texts, and prose in messages (the name
among words, as in "processes that do not set CUDA_MPS_PIPE_DIRECTORY connect to it"). Not allowed: the name
as a string of its own (a dict key, an ``environ.get``), as an assignment (``NAME=value``) or as a shell
reference (``$NAME``): those ask :mod:`colo.gpu.mps.env` for the name.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from colo.gpu.mps import env as mps_env
from colo.gpu.mps.root import MpsPaths

SRC = Path(__file__).resolve().parents[3] / "src" / "colo"
HOME = SRC / "gpu" / "mps" / "env.py"
NAME = re.compile(r"CUDA_MPS_[A-Z][A-Z_]*")


def _docstrings(tree: ast.AST) -> set[int]:
    out: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                out.add(id(first.value))
    return out


def _documentation(tree: ast.AST) -> set[int]:
    out: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg in ("help", "description"):
            out |= {id(n) for n in ast.walk(node.value) if isinstance(n, ast.Constant)}
    return out


def _spelled_in_code(text: str) -> list[str]:
    """The names in ``text`` used as code: the whole string, ``NAME=``, ``$NAME`` / ``${NAME``."""
    found = []
    for m in NAME.finditer(text):
        before, after = text[: m.start()], text[m.end() :]
        if text.strip() == m.group(0) or after.startswith("=") or before.endswith(("$", "${")):
            found.append(m.group(0))
    return found


def test_only_env_py_spells_the_mps_variable_names() -> None:
    problems = []
    for path in sorted(SRC.rglob("*.py")):
        if path == HOME:
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        skip = _docstrings(tree) | _documentation(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
                problems += [f"{path.relative_to(SRC)}:{node.lineno}: {n}" for n in _spelled_in_code(node.value)]
            elif isinstance(node, ast.Name) and NAME.search(node.id):
                problems.append(f"{path.relative_to(SRC)}:{node.lineno}: {node.id}")
    assert not problems, "spell these through colo.gpu.mps.env:\n" + "\n".join(problems)


def test_the_rule_tells_code_from_prose() -> None:
    assert _spelled_in_code("CUDA_MPS_PIPE_DIRECTORY") == ["CUDA_MPS_PIPE_DIRECTORY"]
    assert _spelled_in_code('until [ -e "$CUDA_MPS_PIPE_DIRECTORY/control" ]') == ["CUDA_MPS_PIPE_DIRECTORY"]
    assert _spelled_in_code("add CUDA_MPS_CLIENT_PRIORITY=1 to the pods") == ["CUDA_MPS_CLIENT_PRIORITY"]
    assert _spelled_in_code("processes that do not set CUDA_MPS_PIPE_DIRECTORY connect to it") == []
    assert _spelled_in_code("CUDA_MPS_") == []  # a prefix is not a name


def test_daemon_env_drops_client_limits_and_pins_the_gpu() -> None:
    paths = MpsPaths(Path("/s/pipe"), Path("/s/log"))
    base = {"PATH": "/bin", mps_env.PINNED_DEVICE_MEM_LIMIT: "0=1G", mps_env.ACTIVE_THREAD_PERCENTAGE: "50"}
    env = mps_env.daemon_env(paths, "GPU-1", base)
    assert env == {
        "PATH": "/bin",
        "CUDA_MPS_PIPE_DIRECTORY": "/s/pipe",
        "CUDA_MPS_LOG_DIRECTORY": "/s/log",
        "CUDA_VISIBLE_DEVICES": "GPU-1",
    }
    assert mps_env.limits_env() == {}
    assert mps_env.limits_env(pinned_mem_limit_bytes=1 << 30, device_ordinal=1) == {
        "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT": "1=1024M"
    }
    assert mps_env.pipe_dir_of({}) is None and mps_env.pipe_dir_of(env) == "/s/pipe"
