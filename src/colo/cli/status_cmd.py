"""``colo status``, ``colo apply``, ``colo logs``, ``colo agent start|stop|restart``: a running colo, found
through its state directory.

The SQLite store is the truth for ``status`` when no API answers; actions (``apply``, ``agent
start|stop|restart``) go to the running orchestrator's HTTP API (its address and token are in the state dir:
:func:`colo.api.client.orchestrator_client`); ``logs`` reads the agents' log files there.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console

from colo.cli.common import STATE_DIR_HELP, console, print_json, safe, state_dir_for
from colo.errors import ColoError, UsageError

if TYPE_CHECKING:
    from colo.api.client import Verb


# --- status ------------------------------------------------------------------------------------------------


def status_data(sd: Path) -> dict[str, Any]:
    """What ``colo status`` shows: the orchestrator (pid or None) and every agent, from the running
    orchestrator's API when it answers, else as last recorded in the state dir."""
    from colo.supervise.statedir import recorded_state

    rec = recorded_state(sd)
    if rec is None:
        return {"state_dir": str(sd), "orchestrator": None, "source": "store", "agents": [], "recent_events": []}
    agents = [a.to_dict() for a in rec.agents]
    pid = rec.orchestrator_pid
    orch = {"pid": pid, **(rec.orchestrator or {})} if pid else None
    source = "store"
    if pid and rec.api_url:
        live = _agents_from_api(sd, rec.api_url)
        if live is not None:
            agents, source = live, "api"
    events = [e.to_dict() for e in rec.events]
    return {"state_dir": str(sd), "orchestrator": orch, "source": source, "agents": agents, "recent_events": events}


def _agents_from_api(sd: Path, url: str) -> list[dict[str, Any]] | None:
    """The live agents from the running orchestrator's API, or None when it does not answer."""
    try:
        from colo.api.auth import read_token
        from colo.api.client import ApiClient

        with ApiClient(url, read_token(sd), timeout_secs=3.0) as client:
            return client.agents()
    except (ColoError, ImportError, OSError):
        return None


def status_command(
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    state_dir: Path | None = typer.Option(None, "--state-dir", help=STATE_DIR_HELP),
    config: Path | None = typer.Option(None, "--config", "-c", help="Take the state dir from this colo.yaml."),
) -> None:
    """Each agent's state, pid, GPU, MPS membership, limit, memory, restarts and last error."""
    sd = state_dir_for(state_dir, config)
    data = status_data(sd)
    if as_json:
        print_json(data)
        return
    _print_status(data, sd, console)


def _print_status(data: dict[str, Any], sd: Path, out: Console) -> None:
    """:func:`status_data` for a person: the orchestrator in one line, then a table of the agents."""
    from rich.table import Table

    from colo import units

    if data["orchestrator"] is None and not data["agents"]:
        out.print(f"colo is not running (nothing in state dir {safe(sd)}); start it with `colo up CONFIG`")
        return
    orch = data["orchestrator"]
    if orch:
        gpus = orch.get("mps_gpus")
        if isinstance(gpus, list):
            mode = f"MPS on {', '.join(map(str, gpus))}" if gpus else "time-slicing (no GPU runs MPS)"
        else:
            mode = "MPS" if orch.get("mps") else "time-slicing"
        out.print(f"colo is up: orchestrator pid {orch['pid']}, {mode}, state dir {safe(sd)}", highlight=False)
    else:
        out.print(
            f"[bold yellow]colo is not running[/]: states below are as last recorded in {safe(sd)}", highlight=False
        )
    table = Table(header_style="bold")
    for col in ("agent", "state", "pid", "gpu", "mps", "priority", "limit", "used", "restarts", "last error"):
        table.add_column(col)
    colors = {"RUNNING": "green", "STARTING": "cyan", "BACKOFF": "yellow", "FATAL": "bold red", "EXITED": "red"}
    for a in data["agents"]:
        state = a["state"]
        used = a.get("memory_used_bytes")
        table.add_row(
            safe(a["name"]),
            f"[{colors.get(state, 'white')}]{safe(state)}[/]",
            str(a["pid"] or "-"),
            safe(a["gpu"] or "-"),
            _mps_cell(a),
            safe(a["priority"]),
            units.format_size(a["limit_bytes"]) if a["limit_bytes"] else "-",
            units.format_size(used) if used else "-",
            str(a["restarts"]),
            _last_error_cell(a),
        )
    out.print(table)


def _mps_cell(agent: dict[str, Any]) -> str:
    """The agent's MPS membership against its plan: ``M+C`` (an MPS client, as planned), ``off`` (time-sliced,
    as planned), ``?`` (no CUDA context seen yet), in red when it differs from its plan."""
    planned, actual = agent.get("mps_planned"), agent.get("mps_client")
    if planned is None:
        return "-"
    if actual is None:
        return "?" if planned else "off"
    if bool(actual) == bool(planned):
        return "M+C" if actual else "off"
    return "[bold red]C, not MPS[/]" if planned else "[bold red]M+C, planned off[/]"


def _last_error_cell(agent: dict[str, Any]) -> str:
    """colo's reason (``exit code 1``) and, below it, the last line the agent's process printed when it failed
    (``ModuleNotFoundError: No module named 'torch'``): user text, escaped."""
    reason = (agent.get("last_error") or "")[:80]
    line = (agent.get("last_error_line") or "")[:120]
    if not line:
        return safe(reason)
    return f"{safe(reason)}\n[red]{safe(line)}[/]" if reason else f"[red]{safe(line)}[/]"


# --- actions, through the running orchestrator's HTTP API ----------------------------------------------------


def apply_command(
    config: Path = typer.Argument(..., help="The new colo.yaml."),
    state_dir: Path | None = typer.Option(None, "--state-dir", help=STATE_DIR_HELP),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    force: bool = typer.Option(False, "--force", help="Apply a plan that predicts an agent runs out of memory."),
) -> None:
    """Move the running system to a new colo.yaml: restart only the agents whose limit, placement, command or
    env changed, one at a time. If it does not fit, or the plan predicts an agent runs out of memory (unless
    --force), nothing changes."""
    from colo.api.client import orchestrator_client
    from colo.errors import ConfigError
    from colo.spec import load_config
    from colo.spec.load import in_file
    from colo.supervise.statedir import config_yaml

    cfg = load_config(config)  # a bad file is reported here, with its line
    sd = state_dir_for(state_dir, config)
    with orchestrator_client(sd) as client:
        try:  # sent whole, model paths made absolute: the orchestrator may run in another directory
            result = client.apply(config_yaml(cfg, config.resolve()), config.resolve(), force=force)
        except ConfigError as exc:  # found by the plan (a pin no GPU matches): about this file, at its line
            raise in_file(exc, config) from exc
    result.pop("applied", None)
    if as_json:
        print_json(result)
        return
    _print_applied(result, console)


def _print_applied(result: dict[str, Any], out: Console) -> None:
    """What an apply did, one line per kind of change: the agents it restarted, started, stopped, …"""
    for key in ("restarted", "started", "stopped", "unchanged", "left_out"):
        names = result.get(key) or []
        out.print(f"{key:>9}: {', '.join(names) if names else '-'}", highlight=False)


agent_app = typer.Typer(help="Start, stop or restart one agent of the running system.", no_args_is_help=True)


def _agent_action(action: Verb, name: str, state_dir: Path | None, as_json: bool) -> None:
    from colo.api.client import orchestrator_client

    sd = state_dir_for(state_dir, None)
    with orchestrator_client(sd) as client:
        result = client.action(name, action)["status"]
    if as_json:
        print_json(result)
    else:
        console.print(f"{name}: {result.get('state')} (pid {result.get('pid') or '-'})", highlight=False)


def _action_command(verb: Verb, doc: str) -> None:
    """Register ``colo agent VERB NAME``: one action on the running orchestrator."""

    def command(
        name: str = typer.Argument(..., help="Agent name."),
        state_dir: Path | None = typer.Option(None, "--state-dir", help=STATE_DIR_HELP),
        as_json: bool = typer.Option(False, "--json"),
    ) -> None:
        _agent_action(verb, name, state_dir, as_json)

    command.__doc__ = doc
    command.__name__ = f"agent_{verb}"
    agent_app.command(verb)(command)


_action_command("start", "Start an agent (also one that is FATAL or EXITED).")
_action_command("stop", "Stop an agent; it stays STOPPED until started.")
_action_command("restart", "Restart an agent.")


# --- logs --------------------------------------------------------------------------------------------------


def logs_command(
    agent: str = typer.Argument(..., help="Agent name (or 'orchestrator')."),
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing new lines."),
    lines: int = typer.Option(100, "--lines", "-n", min=0, help="How many lines to print first."),
    state_dir: Path | None = typer.Option(None, "--state-dir", help=STATE_DIR_HELP),
) -> None:
    """Print an agent's log (stdout and stderr); ``-f`` follows it."""
    from colo.supervise.logs import AgentLogs
    from colo.supervise.statedir import StateDirPaths

    sd = state_dir_for(state_dir, None)
    logs = AgentLogs(StateDirPaths(sd).logs)
    if not logs.path(agent).exists():
        raise UsageError(
            f"no log for agent {agent!r} in {logs.dir}", hint="`colo status` lists the agents; check --state-dir"
        )
    for line in logs.tail(agent, lines):
        sys.stdout.write(line + "\n")
    sys.stdout.flush()
    if not follow:
        return
    try:
        for text in logs.follow(agent, keep_going=lambda: True):
            sys.stdout.write(text)
            sys.stdout.flush()
    except KeyboardInterrupt:
        return


def register(app: typer.Typer) -> None:
    """Add ``status``, ``apply``, ``logs`` and the ``agent`` group."""
    app.command("status")(status_command)
    app.command("apply")(apply_command)
    app.command("logs")(logs_command)
    app.add_typer(agent_app, name="agent")
