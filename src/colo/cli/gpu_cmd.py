"""``colo gpu info`` and ``colo mps start|status|stop|env``: the seed's manual MPS steps, done by colo.

GPUs come from NVML; MPS daemons live under ``<state_dir>/mps/<uuid>/`` (``--config`` takes ``state_dir``
and the plan from colo.yaml). Heavy imports stay inside the commands.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from colo.cli.common import console, err_console, print_json, safe
from colo.errors import GpuError, MpsError, UsageError

if TYPE_CHECKING:
    from colo.gpu.mps.control import MpsControl
    from colo.gpu.mps.root import MpsRoot
    from colo.gpu.nvml import GpuBackend, GpuSnapshot
    from colo.spec.config import ColoConfig
    from colo.supervise.planning import NodePlan

gpu_app = typer.Typer(help="GPUs as NVML sees them, with their MPS daemons and client processes.")
mps_app = typer.Typer(help="One CUDA MPS control daemon per GPU: start, status, stop, and client env lines.")

GPU_OPT = typer.Option(None, "--gpu", help="GPU UUID or index (repeatable; default: all).")
CONFIG_OPT = typer.Option(None, "--config", "-c", help="colo.yaml: its state_dir and plan (limits, defaults).")


def _backend() -> GpuBackend:
    from colo.gpu.nvml import NvmlBackend

    return NvmlBackend()


def _control() -> MpsControl:
    from colo.gpu.mps.control import SubprocessMpsControl

    return SubprocessMpsControl()


def _root(config: ColoConfig | None) -> MpsRoot:
    from colo.files import state_dir
    from colo.gpu.mps.root import MpsRoot

    return MpsRoot.under_state_dir(state_dir(config.state_dir if config else None))


def _load(config_path: Path | None) -> ColoConfig | None:
    if config_path is None:
        return None
    from colo.spec import load_config

    return load_config(config_path)


def _select(gpus: list[GpuSnapshot], wanted: list[str] | None) -> list[GpuSnapshot]:
    """GPUs named by ``--gpu`` (UUID, UUID prefix or index). Raises UsageError for one that is not here."""
    if not wanted:
        return gpus
    out: list[GpuSnapshot] = []
    for w in wanted:
        match = [g for g in gpus if (w.isdigit() and g.index == int(w)) or g.uuid == w or g.uuid.startswith(w)]
        if len(match) != 1:
            have = ", ".join(f"{g.index}={g.uuid}" for g in gpus) or "none"
            raise UsageError(
                f"--gpu {w!r} matches {len(match)} GPUs here (GPUs: {have})", hint="use an index or a UUID"
            )
        if match[0] not in out:
            out.append(match[0])
    return out


def _planned(config: ColoConfig, gpus: list[GpuSnapshot] | None) -> NodePlan:
    """The plan ``colo up`` would run here (:func:`colo.supervise.planning.plan_node`); ``gpus``: NVML's."""
    from colo.supervise.planning import plan_node

    return plan_node(config, gpus)


# --- colo gpu info ------------------------------------------------------------------------------------


@gpu_app.command("info")
def info_command(
    as_json: bool = typer.Option(False, "--json", help="The /gpu/info document as JSON."),
    config_path: Path | None = CONFIG_OPT,
) -> None:
    """GPUs, MPS state per GPU, and client processes with their memory (what GET /gpu/info serves)."""
    from colo.gpu.info import gpu_info

    info = gpu_info(_backend(), _root(_load(config_path)), _control())
    if as_json:
        print_json(info)
        return
    _print_info(info)


def _size(v: Any) -> str:
    from colo.units import format_size

    return format_size(int(v)) if isinstance(v, int) else "-"


def _print_info(info: dict[str, Any]) -> None:
    from rich.table import Table

    mps = info["mps"]
    state = "enabled" if mps["enabled"] else ("daemon not answering" if mps["control_process"] else "not running")
    console.print(
        f"driver {info['driver_version']}  CUDA {info['cuda_version']}  MPS: {state}"
        + (f"  (pipe dir {safe(mps['pipe_dir'])})" if mps["pipe_dir"] else ""),
        highlight=False,
    )
    t = Table(box=None, header_style="bold")
    for col in ("GPU", "name", "UUID", "memory used / total", "util", "mode", "MPS daemon"):
        t.add_column(col)
    for g in info["gpus"]:
        d = g["mps"]
        daemon = "healthy" if d["healthy"] else ("not answering" if d["running"] else "-")
        if d["servers"]:
            daemon += " · " + ", ".join(f"server {s['pid']} {s['status']}" for s in d["servers"])
        t.add_row(
            str(g["index"]),
            safe(g["name"]),
            safe(g["uuid"]),
            f"{_size(g['memory_used_bytes'])} / {_size(g['memory_total_bytes'])}",
            f"{g['sm_util_pct']}%" if g["sm_util_pct"] is not None else "-",
            str(g["compute_mode"] or "-"),
            daemon,
        )
    console.print(t)
    if info["processes"]:
        p = Table(box=None, header_style="bold")
        for col in ("GPU", "pid", "type", "memory", "MPS limit", "command"):
            p.add_column(col)
        for r in info["processes"]:
            p.add_row(
                str(r["gpu_index"]),
                str(r["pid"]),
                "M+C" if r["is_mps_client"] else "C",
                _size(r["used_memory_bytes"]),
                _size(r["mps_limit_bytes"]),
                safe(" ".join(r["cmdline"])[:60] or r["name"] or "?"),
            )
        console.print(p)
    else:
        console.print("no GPU processes", style="dim")
    for f in mps["foreign_daemons"]:
        _note_foreign_daemon(f["pid"], f["pipe_dir"], f["visible_devices"])


# --- colo mps start / status / stop ----------------------------------------------------------------------


@mps_app.command("start")
def start_command(
    gpu: list[str] | None = GPU_OPT,
    config_path: Path | None = CONFIG_OPT,
    timeout: float = typer.Option(20.0, "--timeout", min=1.0, max=600.0, help="Seconds to wait for a daemon."),
) -> None:
    """Start (or adopt) one MPS control daemon per GPU, pinned by UUID, as ``colo up`` does: with --config,
    on the GPUs the plan runs agents on; no server-wide default limits (each client's environment, from
    ``colo mps env``, sets its own)."""
    from colo.gpu.mps.daemon import MpsDaemon, MpsDefaults

    config = _load(config_path)
    every = _backend().gpus()
    gpus = _select(every, gpu)
    if config is not None and not gpu:
        planned = _planned(config, every)
        used = set(planned.mps_gpu_uuids())  # the GPUs the plan runs MPS on (policy.mps)
        for line in planned.plan.mps_lines():
            console.print(f"[dim]{safe(line)}[/]", highlight=False, soft_wrap=True)
        gpus = [g for g in gpus if g.uuid in used]
    root = _root(config)
    control = _control()
    for g in gpus:
        d = MpsDaemon(root.for_gpu(g.uuid), g.uuid, control, start_timeout_secs=timeout)
        # No server-wide defaults, like `colo up`: a server default would cap a limit raised later.
        started = d.start(MpsDefaults())
        verb = "started" if started else "adopted running"
        console.print(f"gpu{g.index} {safe(g.uuid)}: {verb} MPS daemon (pipe dir {safe(d.paths.pipe_dir)})", highlight=False)
    _warn_foreign(root, [g.uuid for g in gpus], control)


def _warn_foreign(root: MpsRoot, uuids: list[str], control: MpsControl) -> None:
    from colo.gpu.mps.fleet import MpsFleet

    for f in MpsFleet(root, uuids, control).foreign_daemons():
        _note_foreign_daemon(f.pid, f.pipe_dir, f.visible_devices)


def _note_foreign_daemon(pid: int, pipe_dir: str, visible_devices: str | None) -> None:
    """Say (on stderr) that an MPS control daemon colo did not start serves ``pipe_dir``."""
    err_console.print(
        f"[yellow]note:[/] another MPS control daemon (pid {pid}) runs with pipe dir {safe(pipe_dir)}"
        + (f" (CUDA_VISIBLE_DEVICES={safe(visible_devices)})" if visible_devices else " (all GPUs)")
        + "; processes that do not set CUDA_MPS_PIPE_DIRECTORY connect to it",
        highlight=False,
    )


def _daemon_uuids(root: MpsRoot, wanted: list[str] | None) -> list[tuple[int | None, str]]:
    """(index, uuid) of the GPUs to act on: NVML's when readable, else the root's per-GPU directories."""
    try:
        return [(g.index, g.uuid) for g in _select(_backend().gpus(), wanted)]
    except GpuError:
        uuids = root.gpu_uuids()
        if wanted:
            uuids = [u for u in uuids if any(u == w or u.startswith(w) for w in wanted)]
            if not uuids:
                raise
        return [(None, u) for u in uuids]


@mps_app.command("status")
def status_command(
    gpu: list[str] | None = GPU_OPT,
    config_path: Path | None = CONFIG_OPT,
    as_json: bool = typer.Option(False, "--json", help="Print the status as JSON."),
) -> None:
    """Each GPU's daemon: running/healthy, servers with state (INITIALIZING/ACTIVE/FAULT), clients with memory."""
    from colo.gpu.info import pinned_limit_of
    from colo.gpu.mps.daemon import MpsDaemon

    config = _load(config_path)
    root = _root(config)
    targets = _daemon_uuids(root, gpu)
    try:
        used = {p.pid: p.used_memory_bytes for p in _backend().processes()}
    except GpuError:
        used = {}
    rows: list[dict[str, Any]] = []
    control = _control()
    for index, uuid in targets:
        st = MpsDaemon(root.for_gpu(uuid), uuid, control).status()
        row = st.to_dict() | {"gpu_index": index, "clients": []}
        for s in st.servers:
            for c in s.client_pids:
                row["clients"].append(
                    {"pid": c, "server_pid": s.pid, "used_memory_bytes": used.get(c), "limit_bytes": pinned_limit_of(c)}
                )
        rows.append(row)
    if as_json:
        print_json({"root": str(root.base_dir), "daemons": rows})
        return
    for r in rows:
        label = f"gpu{r['gpu_index']} " if r["gpu_index"] is not None else ""
        state = "healthy" if r["healthy"] else ("NOT ANSWERING" if r["running"] else "not running")
        pid = f" (pid {r['control_pid']})" if r["control_pid"] else ""
        console.print(f"{label}{safe(r['gpu_uuid'])}: daemon {state}{pid}  pipe dir {safe(r['pipe_dir'])}", highlight=False)
        if r["error"]:
            console.print(f"  {safe(r['error'])}", style="red", highlight=False)
        for s in r["servers"]:
            console.print(f"  server {s['pid']}: {s['status']}, {len(s['client_pids'])} client(s)", highlight=False)
        for c in r["clients"]:
            console.print(
                f"    client {c['pid']}: {_size(c['used_memory_bytes'])} used of {_size(c['limit_bytes'])} limit",
                highlight=False,
            )


@mps_app.command("stop")
def stop_command(
    gpu: list[str] | None = GPU_OPT,
    config_path: Path | None = CONFIG_OPT,
    timeout: float = typer.Option(10.0, "--timeout", min=1.0, max=600.0, help="Seconds `quit -t` may take."),
) -> None:
    """Quit each GPU's daemon (``quit -t``); kill it and its servers if it does not answer."""
    from colo.gpu.mps.daemon import MpsDaemon

    root = _root(_load(config_path))
    failures: list[str] = []
    control = _control()
    for index, uuid in _daemon_uuids(root, gpu):
        label = f"gpu{index} {uuid}" if index is not None else uuid
        try:
            result = MpsDaemon(root.for_gpu(uuid), uuid, control).stop(timeout_secs=timeout)
        except MpsError as exc:
            failures.append(f"{label}: {exc}")
            continue
        console.print(f"{safe(label)}: {safe(result.message)}", highlight=False)
    if failures:
        raise MpsError("; ".join(failures))


# --- colo mps env AGENT ----------------------------------------------------------------------------------


@mps_app.command("env")
def env_command(
    agent: str = typer.Argument(..., help="Agent name from colo.yaml."),
    config_path: Path = typer.Option(..., "--config", "-c", help="colo.yaml with the agent."),
) -> None:
    """Print the ``export`` lines that start AGENT by hand as an MPS client under its planned limits: the
    environment ``colo up`` launches it with (same plan, same launch setup)."""
    from colo.files import state_dir
    from colo.gpu.mps.env import client_env
    from colo.supervise.planning import launch_setup
    from colo.supervise.statedir import StateDirPaths
    from colo.units import format_size

    config = _load(config_path)
    assert config is not None
    if agent not in config.agents:
        raise UsageError(
            f"no agent {agent!r} in {config_path}", hint="agents there: " + ", ".join(sorted(config.agents))
        )
    try:
        gpus = _backend().gpus()
    except GpuError:
        if config.gpus == "auto":
            raise
        gpus = None
    planned = _planned(config, gpus)
    ap = planned.plan.agent(agent)
    if ap.gpu is None:
        raise UsageError(f"agent {agent!r} fits on no GPU in the plan", hint="run `colo plan` to see why")
    uuid = ap.gpu.uuid
    root = _root(config)
    if not ap.mps:
        setup = launch_setup(config, ap, config_copy=StateDirPaths(state_dir(config.state_dir)).config_copy, mps_root=root)
        reason = planned.plan.gpu(ap.gpu).mps_reason
        lines = [
            f"# {agent}: no MPS on {ap.gpu.label} ({reason}); limit {format_size(ap.limit_bytes)} held by "
            f"{ap.enforcement}" + (f" ({uuid})" if uuid else "")
        ]
        lines += [f"export {k}={shlex.quote(v)}" for k, v in setup.launch.env if k != "COLO_AGENT"]
        spec = config.agents[agent]
        if spec.command:
            lines.append("# then: " + shlex.join(spec.command))
        for ln in lines:
            typer.echo(ln)
        return
    lines = [
        f"# {agent}: {format_size(ap.limit_bytes)} MPS limit, {ap.active_thread_pct}% of SMs, "
        f"client priority {ap.client_priority}, on {ap.gpu.label}" + (f" ({uuid})" if uuid else "")
    ]
    if uuid:
        order = list(client_env(ap, root.for_gpu(uuid), gpu_uuid=uuid))
        setup = launch_setup(config, ap, config_copy=StateDirPaths(state_dir(config.state_dir)).config_copy, mps_root=root)
        launch_env = {k: v for k, v in setup.launch.env if k != "COLO_AGENT"}
        env = {k: launch_env[k] for k in order if k in launch_env} | launch_env
        lines.append(f"# the GPU's daemon must be running: colo mps start --gpu {uuid} --config {config_path}")
    else:
        env = client_env(ap, root.base_dir / "<gpu-uuid>" / "pipe")
        lines.append("# no GPU UUID is known here (NVML not readable): replace <gpu-uuid> with the GPU's UUID")
    lines += [f"export {k}={shlex.quote(v)}" for k, v in env.items()]
    spec = config.agents[agent]
    if spec.command:
        lines.append("# then: " + shlex.join(spec.command))
    for ln in lines:
        typer.echo(ln)


def register(app: typer.Typer) -> None:
    """Add ``colo gpu ...`` and ``colo mps ...``."""
    app.add_typer(gpu_app, name="gpu")
    app.add_typer(mps_app, name="mps")
