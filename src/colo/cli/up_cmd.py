"""``colo up`` and ``colo down``: start colo on this machine and stop it again.

``up`` runs the orchestrator in the foreground (systemd-friendly: SIGTERM/SIGINT stop it cleanly, SIGHUP
re-applies the config file) or detached; how is :mod:`colo.supervise.up_run` (detaching, the foreground run,
the first-outcome watch) and :mod:`colo.api.background` (the API in a thread) — this view only prints, through
the :class:`UpView` it is given. ``down`` signals the orchestrator that holds the state dir and waits for it
to stop (:func:`colo.supervise.statedir.stop_orchestrator`); with none running it stops what an orchestrator
that died left behind.

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
    from colo.launch.runner import Runner
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
    from colo.supervise.startup import early_runner
    from colo.supervise.statedir import StateDirPaths, resolve_state_dir, running_orchestrator

    mps_mode = check_mps_option(mps, no_mps)
    cfg = load_config(config)
    if not skip_needs_check:
        check_builtin_agent_needs(cfg)
    sd = resolve_state_dir(cfg, state_dir)
    other = running_orchestrator(sd)
    if other is not None:
        raise SupervisorError(
            f"colo is already up with state dir {sd} (pid {other})",
            hint="`colo status` shows it; `colo apply CONFIG` changes it; `colo down` stops it",
        )
    # In the foreground the agents' launcher starts importing now, while colo plans (seconds of torch).
    runner = None if detach else early_runner(cfg, Path(config).resolve(), StateDirPaths(sd).logs)
    try:
        # The one plan of this `up` (the orchestrator takes it, across the detach): exit 2 with the findings
        # when it predicts out-of-memory, unless --force.
        planned = planning.plan_run(
            cfg, planning.read_gpus(), state_dir=sd, node=node, mps_mode=mps_mode, use_mps=not no_mps, force=force
        )
    except BaseException:
        if runner is not None:
            runner.close()
        raise
    view = UpView(console, err_console, as_json)
    if detach:
        view = _detach(StateDirPaths(sd), cfg, view)  # returns in the detached child only
    up_foreground(
        cfg, config, sd, use_mps=not no_mps, node=node, api=not no_api, as_json=as_json, mps_mode=mps_mode,
        planned=planned, view=view, runner=runner,
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


def up_foreground(
    cfg: ColoConfig,
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
    runner: Runner | None = None,
) -> None:
    """Run the orchestrator here until it is stopped (:func:`colo.supervise.up_run.run_foreground`),
    printing what it did, serving its API (unless not ``api``) and reporting the first outcome. ``runner``:
    the orchestrator's (its launcher started early, :func:`colo.supervise.startup.early_runner`), else its own."""
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
        from colo.launch.fork_runner import ForkRunner

        node = orch.runner.node if isinstance(orch.runner, ForkRunner) else None
        if node is not None:
            v.say(f"colo up: built-in agents forked from the node launcher (pid {node.pid}, {safe(node.socket)})")
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
            mps_mode=mps_mode, runner=runner,
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


def register(app: typer.Typer) -> None:
    """Add ``up`` and ``down``."""
    app.command("up")(up_command)
    app.command("down")(down_command)
