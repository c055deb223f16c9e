"""``colo up``, ``colo down``, ``colo status``, ``colo apply``, ``colo logs``, ``colo agent start|stop|restart``.

``up`` runs the orchestrator in the foreground (systemd-friendly: SIGTERM/SIGINT stop it cleanly, SIGHUP
re-applies the config file) or detached; how is :mod:`colo.supervise.up_run` (detaching, the foreground run,
the first-outcome watch) and :mod:`colo.api.background` (the API in a thread) — this view only prints, through
the :class:`UpView` it is given. The other commands find it through its state directory: the
SQLite store is the truth for ``status`` when no API answers; actions (``apply``, ``agent start|stop|restart``)
go to the running orchestrator's HTTP API (its address and token are in the state dir), and ``down`` signals
its pid.

``up`` reports what became of the agents: after launching, it waits (bounded by the agents' start timeouts)
until each has a first outcome — RUNNING, or crash-looping/FATAL with the last line its process printed — and
prints how many reached RUNNING. Detached, it then exits 0 when all did, :data:`EXIT_NOT_ALL_RUNNING` (3) when
some did not — the orchestrator keeps running and supervising them either way. In the foreground it prints
the same summary and goes on supervising (its exit code is that of its stop: 0 after a clean ``colo down``).
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console

from colo.cli.common import STATE_DIR_HELP, _console, console, err_console, print_json, safe, state_dir_for
from colo.errors import ColoError, SupervisorError, UsageError
from colo.spec.config import MPS_MODES

if TYPE_CHECKING:
    from colo.api.client import Verb
    from colo.spec.config import ColoConfig, MpsMode
    from colo.supervise.first_outcome import UpOutcome
    from colo.supervise.planning import NodePlan
    from colo.supervise.statedir import StateDirPaths, Stopped
    from colo.supervise.up_record import UpResult

#: ``colo up --detach``: the orchestrator is up, but not every agent reached RUNNING (it keeps supervising).
EXIT_NOT_ALL_RUNNING = 3


# --- up ----------------------------------------------------------------------------------------------------


def up_command(
    config: Path = typer.Argument(..., help="colo.yaml to run."),
    no_mps: bool = typer.Option(False, "--no-mps", help="Plain time-slicing: no MPS daemons, same supervision."),
    mps: str | None = typer.Option(
        None,
        "--mps",
        metavar="auto|on|off",
        help="policy.mps for this run (applies and reloads too): auto (MPS on GPUs with 2+ agents), on, off.",
    ),
    detach: bool = typer.Option(
        False,
        "--detach",
        "-d",
        help="Run in the background (pid file, log file). Exits 0 once every agent is RUNNING, 3 when some "
        "did not get there (the orchestrator keeps running).",
    ),
    node: str | None = typer.Option(None, "--node", help="Which node of the inventory this machine is."),
    state_dir: Path | None = typer.Option(None, "--state-dir", help=STATE_DIR_HELP),
    no_api: bool = typer.Option(
        False, "--no-api", help="Do not serve the HTTP API (then `colo apply` and `colo agent` cannot reach it)."
    ),
    force: bool = typer.Option(False, "--force", help="Run a plan that predicts an agent runs out of memory."),
    skip_needs_check: bool = typer.Option(
        False,
        "--skip-needs-check",
        help="Launch built-in model agents even when this Python cannot import torch and transformers.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the agents' first outcome as JSON."),
) -> None:
    """Plan against the GPUs, start the MPS daemons, launch the agents by priority and supervise them;
    report how many reached RUNNING and why the others did not."""
    from colo.spec import load_config
    from colo.supervise import planning
    from colo.supervise.statedir import StateDirPaths, resolve_state_dir, running_orchestrator

    mps_mode = check_mps_option(mps, no_mps)
    cfg = load_config(config)
    if not skip_needs_check:
        check_builtin_agent_needs(cfg)
    sd = resolve_state_dir(cfg, state_dir)
    # The one plan of this `up` (the orchestrator takes it, across the detach): exit 2 with the findings when
    # it predicts out-of-memory, unless --force.
    planned = planning.plan_run(
        cfg, planning.read_gpus(), state_dir=sd, node=node, mps_mode=mps_mode, use_mps=not no_mps, force=force
    )
    other = running_orchestrator(sd)
    if other is not None:
        raise SupervisorError(
            f"colo is already up with state dir {sd} (pid {other})",
            hint="`colo status` shows it; `colo apply CONFIG` changes it; `colo down` stops it",
        )
    view = UpView(console, err_console, as_json)
    if detach:
        view = _detach(StateDirPaths(sd), cfg, view)  # returns in the detached child only
    _run_foreground(
        cfg, config, sd, use_mps=not no_mps, node=node, api=not no_api, as_json=as_json, mps_mode=mps_mode,
        planned=planned, view=view,
    )


def check_mps_option(mps: str | None, no_mps: bool) -> MpsMode | None:
    """``--mps auto|on|off`` as a policy.mps value (None: the config's). Raises UsageError (exit 2) for another
    value, or with ``--no-mps`` (which is ``off`` for the run) unless it says off too."""
    if mps is None:
        return None
    if mps not in MPS_MODES:
        raise UsageError(f"--mps {mps!r}: write auto, on or off")
    if no_mps and mps != "off":
        raise UsageError(f"--no-mps and --mps {mps} disagree; give one of them")
    return mps


def check_builtin_agent_needs(cfg: ColoConfig) -> None:
    """Refuse (UsageError, exit 2) when an agent runs colo's built-in model agent (no ``command:``) and the
    Python it would run with — this one, ``sys.executable`` — cannot import torch or transformers."""
    from colo.modelserver.command import missing_modules

    builtin = [name for name, agent in cfg.agents.items() if agent.command is None]
    if not builtin:
        return
    missing = missing_modules()
    if not missing:
        return
    pip = Path(sys.executable).with_name("pip")
    pip_cmd = str(pip) if pip.exists() else f"{sys.executable} -m pip"
    shown = ", ".join(builtin[:5]) + (f" and {len(builtin) - 5} more" if len(builtin) > 5 else "")
    raise UsageError(
        f"{len(builtin)} agent(s) ({shown}) run colo's built-in model agent (no `command:` in colo.yaml), which "
        f"needs torch and transformers, but this Python ({sys.executable}) cannot import {' or '.join(missing)}; "
        "every one of them would crash at start",
        hint=f"install them from colo's source directory: `{pip_cmd} install -e '.[profile]' -c constraints.txt` "
        "(torch is pinned there); or give those agents a `command:`; `--skip-needs-check` launches them anyway",
    )


@dataclass
class UpView:
    """Where ``colo up`` prints: ``out`` (stdout) and ``err`` (stderr) consoles, passed to every printer.
    The detached child gets its own (:meth:`for_log`): the log file wants plain unwrapped lines."""

    out: Console
    err: Console
    as_json: bool = False

    @classmethod
    def for_log(cls, as_json: bool) -> UpView:
        return cls(_console(stderr=False), _console(stderr=True), as_json)

    def say(self, text: str) -> None:
        """A line for people: stdout, or stderr with --json (stdout is the JSON then). ``text`` is markup-safe."""
        (self.err if self.as_json else self.out).print(text, highlight=False)

    def warn(self, msg: str) -> None:
        """One warning on stderr; ``msg`` is plain text (user text in it is escaped here)."""
        self.err.print(f"[bold yellow]warning:[/] {safe(msg)}", highlight=False, soft_wrap=True)


def _detach(paths: StateDirPaths, cfg: ColoConfig, view: UpView) -> UpView:
    """Detach (:func:`colo.supervise.up_run.detach`). The parent waits until the child holds the state dir,
    then for the agents' first outcome, prints it and exits 0 or 3; the child goes on with a view of its
    own (its stdout and stderr are the log file now)."""
    from colo.supervise.up_run import detach, wait_detached_outcome, wait_until_held

    log = detach(paths)
    if log is None:
        return UpView.for_log(view.as_json)
    pid = wait_until_held(paths, log)
    view.say(f"colo up: running in the background, pid {pid}; log {safe(log.path)}")
    progress = _Progress(view.as_json)
    try:
        outcome = wait_detached_outcome(paths, cfg, pid, log, progress.show)
    finally:
        progress.clear()
    _print_outcome(outcome, view, extra={"pid": pid, "log": str(log.path)})
    raise typer.Exit(0 if outcome.all_running else EXIT_NOT_ALL_RUNNING)


def _run_foreground(
    cfg: Any,
    config_path: Path,
    sd: Path,
    *,
    use_mps: bool,
    node: str | None,
    api: bool,
    run_agents: bool = True,
    as_json: bool = False,
    mps_mode: MpsMode | None = None,
    planned: NodePlan | None = None,
    view: UpView | None = None,
) -> None:
    """Run the orchestrator here until it is stopped (:func:`colo.supervise.up_run.run_foreground`),
    printing what it did, serving its API (unless not ``api``) and reporting the first outcome."""
    from colo.supervise.orchestrator import Orchestrator
    from colo.supervise.up_run import run_foreground, watch_first_outcome

    v = view or UpView(console, err_console, as_json)

    def started(orch: Orchestrator, result: UpResult) -> Callable[[], None] | None:
        for w in result.warnings:
            v.warn(w)
        for u in result.left_out:
            v.warn(f"{u.agent} ({u.priority}) left out: {u.reason}")
        mode = "MPS" if result.mps else "time-slicing (no MPS)"
        v.say(
            f"colo up: {len(result.started)} launched, {len(result.adopted)} adopted, {len(result.left_out)} left"
            f" out; {mode}; state {safe(sd)}"
        )
        if not api:
            return None
        from colo.api.background import serve_in_thread

        served = serve_in_thread(orch, sd, v.warn)
        if served is None:
            return None
        v.say(f"colo API: {safe(served.url)}")
        return served.stop

    def watch(orch: Orchestrator, result: UpResult, stop: threading.Event) -> None:
        progress = _Progress(v.as_json)

        def report(outcome: UpOutcome) -> None:
            progress.clear()
            _print_outcome(outcome, v)

        def failed(exc: ColoError) -> None:
            progress.clear()
            v.warn(f"could not report the agents' first outcome: {exc}")

        watch_first_outcome(
            orch, [*result.started, *result.adopted], stop, progress=progress.show, report=report, failed=failed
        )
        progress.clear()

    result = run_foreground(
        lambda: Orchestrator(
            cfg, config_path=config_path, state_dir=sd, use_mps=use_mps, node=node, run_agents=run_agents,
            mps_mode=mps_mode,
        ),
        planned,
        started=started,
        watch=watch,
    )
    v.say("colo down: agents stopped" + (", MPS daemons quit" if result.mps else ""))


def _print_outcome(outcome: UpOutcome, view: UpView, *, extra: dict[str, Any] | None = None) -> None:
    """The first-outcome summary: ``N of M agents RUNNING``, then one line per agent that is not, with
    colo's reason and the last line its process printed (user text, never markup)."""
    if view.as_json:
        print_json({**(extra or {}), **outcome.to_dict()})
        return
    out = view.out
    total = len(outcome.agents)
    ok = len(outcome.running)
    secs = f"after {outcome.waited_secs:.0f} s"
    if not total:
        out.print("colo up: no agent was launched on this node", highlight=False)
        return
    if outcome.all_running:
        out.print(f"colo up: all {total} agents RUNNING ({secs})", highlight=False)
        return
    out.print(
        f"[bold yellow]colo up: {ok} of {total} agents RUNNING[/] ({secs}); "
        f"{total - ok} did not get there:",
        highlight=False,
    )
    for a in outcome.not_running:
        why = a.last_error_line or a.reason or "(no reason recorded)"
        extra_reason = f" ({safe(a.reason)})" if a.last_error_line and a.reason else ""
        label = "still starting" if a.outcome.value == "starting" else a.outcome.value
        out.print(f"  {safe(a.name)}: {label}{extra_reason}: {safe(why)}", highlight=False, soft_wrap=True)
    out.print(
        "  the orchestrator keeps supervising them; `colo status` shows each agent, `colo logs AGENT` its log",
        highlight=False,
    )


class _Progress:
    """A live one-line progress on stderr when it is a terminal (nothing otherwise, nor with --json)."""

    def __init__(self, as_json: bool) -> None:
        self.live = sys.stderr.isatty() and not as_json
        self.shown = False

    def show(self, text: str, secs: float) -> None:
        if self.live:
            sys.stderr.write(f"\r\x1b[K{text} ({secs:.0f} s)")
            sys.stderr.flush()
            self.shown = True

    def clear(self) -> None:
        if self.shown:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()
            self.shown = False


# --- down --------------------------------------------------------------------------------------------------


def down_command(
    state_dir: Path | None = typer.Option(None, "--state-dir", help=STATE_DIR_HELP),
    config: Path | None = typer.Option(None, "--config", "-c", help="Take the state dir from this colo.yaml."),
    timeout: float = typer.Option(120.0, "--timeout", min=1.0, help="Seconds to wait for a clean stop."),
) -> None:
    """Stop the agents gracefully and quit the MPS daemons colo started."""
    from colo.supervise.statedir import stop_orchestrator

    sd = state_dir_for(state_dir, config)
    _print_stopped(stop_orchestrator(sd, timeout_secs=timeout), sd, console)


def _print_stopped(stopped: Stopped, sd: Path, out: Console) -> None:
    """What ``colo down`` did: the orchestrator that stopped, or what was left over and stopped here."""
    pid = stopped.orchestrator_pid
    if pid is not None:
        out.print(f"colo down: orchestrator (pid {pid}) stopped its agents and quit", highlight=False)
        return
    if not stopped.leftovers:
        out.print(f"colo down: nothing is running (state dir {safe(sd)})", highlight=False)
        return
    for line in stopped.leftovers:
        out.print(f"colo down: {safe(line)}", highlight=False)


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
    from rich.table import Table

    from colo import units

    sd = state_dir_for(state_dir, config)
    data = status_data(sd)
    if as_json:
        print_json(data)
        return
    if data["orchestrator"] is None and not data["agents"]:
        console.print(f"colo is not running (nothing in state dir {safe(sd)}); start it with `colo up CONFIG`")
        return
    orch = data["orchestrator"]
    if orch:
        gpus = orch.get("mps_gpus")
        if isinstance(gpus, list):
            mode = f"MPS on {', '.join(map(str, gpus))}" if gpus else "time-slicing (no GPU runs MPS)"
        else:
            mode = "MPS" if orch.get("mps") else "time-slicing"
        console.print(f"colo is up: orchestrator pid {orch['pid']}, {mode}, state dir {safe(sd)}", highlight=False)
    else:
        console.print(
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
    console.print(table)


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
    from colo.spec import load_config
    from colo.supervise.statedir import config_yaml

    cfg = load_config(config)  # a bad file is reported here, with its line
    sd = state_dir_for(state_dir, config)
    with orchestrator_client(sd) as client:
        # Sent whole, model paths made absolute: the orchestrator may run in another directory.
        result = client.apply(config_yaml(cfg, config.resolve()), config.resolve(), force=force)
    result.pop("applied", None)
    if as_json:
        print_json(result)
        return
    for key in ("restarted", "started", "stopped", "unchanged", "left_out"):
        names = result.get(key) or []
        console.print(f"{key:>9}: {', '.join(names) if names else '-'}", highlight=False)


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
    """Add ``up``, ``down``, ``status``, ``apply``, ``logs`` and the ``agent`` group."""
    app.command("up")(up_command)
    app.command("down")(down_command)
    app.command("status")(status_command)
    app.command("apply")(apply_command)
    app.command("logs")(logs_command)
    app.add_typer(agent_app, name="agent")
