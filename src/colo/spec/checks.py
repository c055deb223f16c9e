"""What a colo.yaml can show would fail at ``colo up``, found by ``colo validate`` before anything starts.

The schema (``config.py``) refuses values that are wrong on their own (a URL that is not one, a NUL byte in
an env value). These checks look across fields and at this machine: two agents (or an agent and the API) on
one port is an error; a command that is not on ``PATH`` here, or a ``cwd`` that is not a directory, is a
warning (the file may be meant for another host). Each finding names the field path and its line.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path as FsPath
from typing import Literal

from colo.spec.config import ColoConfig
from colo.spec.load import Loaded, dotted
from colo.spec.yaml_lines import Path, line_of

Severity = Literal["error", "warning"]


@dataclass(frozen=True)
class FileFinding:
    """One problem in a file: ``field`` a dotted path (``agents.critic.port``), ``line`` 1-based or None."""

    severity: Severity
    field: str
    line: int | None
    message: str

    @property
    def where(self) -> str:
        """``agents.critic.port (line 14)``."""
        return f"{self.field} (line {self.line})" if self.line else self.field


def check_file(
    config: ColoConfig, loaded: Loaded | None = None, *, builtin_port: Callable[[str], int] | None = None
) -> list[FileFinding]:
    """Cross-field and this-machine checks of a valid config (``loaded`` gives lines).

    ``builtin_port(agent)`` is the port colo's built-in agent would listen on for an agent with no
    ``command`` (the supervisor's rule); without it only explicit ports are compared.
    """
    lines = loaded.lines if loaded else {}
    return [*check_ports(config, lines, builtin_port), *check_commands(config, lines)]


def _finding(severity: Severity, path: Path, lines: dict[Path, int], message: str) -> FileFinding:
    return FileFinding(severity, dotted(path), line_of(lines, path), message)


def check_ports(
    config: ColoConfig, lines: dict[Path, int], builtin_port: Callable[[str], int] | None = None
) -> list[FileFinding]:
    """Errors for two listeners on one port: agents' ``port`` (or the built-in agent's default) and the API.

    Only for a one-host config (``gpus: auto`` or an inventory of one node): across nodes (``colo node``,
    Kubernetes pods) agents do not share a network namespace, and which node an agent lands on is the plan's.
    """
    if isinstance(config.gpus, list) and len({g.node for g in config.gpus}) > 1:
        return []
    claims: dict[int, list[tuple[str, Path]]] = {}
    api_who = "the API" if ("api", "port") in lines else "the API (its default port)"
    claims.setdefault(config.api.port, []).append((api_who, ("api", "port")))
    for name in sorted(config.agents):
        spec = config.agents[name]
        if spec.port is not None:
            claims.setdefault(spec.port, []).append((f"agent {name}", ("agents", name, "port")))
        elif spec.command is None and builtin_port is not None:
            claims.setdefault(builtin_port(name), []).append((f"agent {name} (built-in default)", ("agents", name)))
    out = []
    for port, users in sorted(claims.items()):
        if len(users) < 2:
            continue
        first_who, first_path = users[0]
        at = f" (line {lines[first_path]})" if first_path in lines else ""
        for _who, path in users[1:]:
            out.append(_finding(
                "error", path, lines,
                f"port {port} is also used by {first_who}{at}; colo up would fail to start one of them — "
                "give each agent its own 'port'",
            ))
    return out


def _command_problem(argv0: str, cwd: str | None, env_path: str | None) -> str | None:
    if "/" in argv0:
        target = FsPath(argv0) if os.path.isabs(argv0) else FsPath(cwd or ".") / argv0
        if not target.is_file():
            return f"{argv0!r} does not exist here" + (f" (relative to {cwd!r})" if cwd and target != FsPath(argv0) else "")
        if not os.access(target, os.X_OK):
            return f"{argv0!r} is not executable"
        return None
    if shutil.which(argv0, path=env_path) is None:
        return f"{argv0!r} is not on PATH here"
    return None


def check_commands(config: ColoConfig, lines: dict[Path, int]) -> list[FileFinding]:
    """Warnings for agents' and health checks' commands that would not start on this machine, and bad cwds."""
    out = []
    for name in sorted(config.agents):
        spec = config.agents[name]
        env_path = spec.env.get("PATH")
        if spec.cwd is not None and not FsPath(spec.cwd).expanduser().is_dir():
            out.append(_finding("warning", ("agents", name, "cwd"), lines, f"{spec.cwd!r} is not a directory here"))
        for path, argv in (
            (("agents", name, "command"), spec.command),
            (("agents", name, "health", "command"), spec.health.command if spec.health.type == "command" else None),
        ):
            if not argv:
                continue
            problem = _command_problem(argv[0], spec.cwd, env_path)
            if problem:
                out.append(_finding(
                    "warning", (*path, 0), lines, f"{problem}; colo up would fail to start it on this machine",
                ))
    return out
