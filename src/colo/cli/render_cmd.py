"""``colo render k8s|nvidia-device-plugin|systemd`` and ``colo node`` (the node agent).

The renderers are pure (:mod:`colo.render`); this module loads the config, plans, writes the files
atomically and prints what it did. A plan that leaves an agent out is an error here: there is nothing to
render for an agent without a GPU.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import typer

from colo import __version__
from colo.cli.common import console, err_console, print_json, safe
from colo.errors import UsageError
from colo.plan import Plan, require_complete
from colo.plan.explain import explain_plan
from colo.spec.config import ColoConfig

render_app = typer.Typer(
    help="Render a plan for Kubernetes, NVIDIA's device plugin, or systemd.",
    no_args_is_help=True,
)

RENDER_MARK = "# Rendered by `colo render"


def _load(config_path: str, from_db: bool, db: str | None) -> tuple[ColoConfig, str, Plan]:
    """The config, its text, and its complete plan. Raises ConfigError, PlanError/DoesNotFitError."""
    from colo.spec.load import load_config, read_text
    from colo.supervise.planning import plan_config

    text = read_text(config_path)
    config = load_config(config_path)
    p = require_complete(plan_config(config, from_db=from_db, db=db).plan)
    return config, text, p


def _write_tree(out: Path, files: dict[str, str], *, prune: tuple[str, ...] = ()) -> list[Path]:
    """Write ``files`` under ``out`` atomically; remove earlier colo-rendered files under ``prune`` dirs
    that this rendering no longer has (an agent that was removed). Returns the paths written."""
    from colo.files import write_atomic

    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a directory")
    written = [write_atomic(out / rel, text) for rel, text in sorted(files.items())]
    keep = {(out / rel).resolve() for rel in files}
    for sub in prune:
        base = out / sub
        if not base.is_dir():
            continue
        for old in sorted(base.rglob("*")):
            if old.is_file() and old.resolve() not in keep:
                try:
                    head = old.read_text(encoding="utf-8", errors="replace")[:200]
                except OSError:
                    continue
                if RENDER_MARK in head:
                    old.unlink()
    return written


_FROM_DB = typer.Option(False, "--from-db", help="Use measured (else estimated) memory from the model DB.")
_DB = typer.Option(None, "--db", help="Model database file (default: the state dir's).")


@render_app.command("k8s")
def k8s_command(
    config_path: str = typer.Argument(..., metavar="CONFIG", help="colo.yaml with a cluster inventory."),
    out: Path = typer.Option(..., "--out", help="Directory for the manifests (kustomization.yaml at its top)."),
    namespace: str = typer.Option("colo", "--namespace", help="Namespace of every object."),
    image: str = typer.Option(f"colo:{__version__}", "--image", help="Image with colo (node agent, agents)."),
    agent_image: str | None = typer.Option(None, "--agent-image", help="Image for the agents (default --image)."),
    service_monitor: bool = typer.Option(False, "--service-monitor", help="Add a prometheus-operator ServiceMonitor."),
    runtime_class: str = typer.Option(
        "nvidia", "--runtime-class", help="RuntimeClass of the NVIDIA container runtime ('' for none)."
    ),
    state_dir: str = typer.Option("/var/lib/colo", "--state-dir", help="Node agent's state dir on each host."),
    agent_uid: int = typer.Option(1000, "--agent-uid", min=1, help="uid of every agent pod (one MPS user)."),
    from_db: bool = _FROM_DB,
    db: str | None = _DB,
    as_json: bool = typer.Option(False, "--json", help="Print what was written as JSON."),
) -> None:
    """Render Kubernetes manifests: node-agent DaemonSet, one pinned Deployment per agent, ConfigMap, Service."""
    from colo.render.k8s import K8sOptions, render_k8s
    from colo.render.node_agent import NodeAgentLayout

    config, text, p = _load(config_path, from_db, db)
    opts = K8sOptions(
        namespace=namespace,
        image=image,
        agent_image=agent_image,
        service_monitor=service_monitor,
        runtime_class=runtime_class or None,
        agent_uid=agent_uid,
        layout=NodeAgentLayout(state_dir=state_dir),
    )
    rendered = render_k8s(config, p, config_text=text, source=Path(config_path).name, options=opts)
    written = _write_tree(out, rendered.files, prune=("agents",))
    placement = rendered.files["placement.txt"].splitlines()[1:]
    if as_json:
        print_json(
            {"out": str(out), "files": sorted(rendered.files), "notes": list(rendered.notes), "placement": placement}
        )
        return
    for line in placement:
        console.print(safe(line), highlight=False, soft_wrap=True)
    console.print(f"wrote {len(written)} files to {safe(out)}", highlight=False)
    console.print(
        f"next: label the GPU nodes `kubectl label node NODE {opts.node_label[0]}={opts.node_label[1]}`, "
        f"create the API token `kubectl create namespace {namespace}; kubectl -n {namespace} create secret "
        f"generic {opts.api_token_secret} --from-literal=token=$(openssl rand -hex 32)`, then "
        f"`kubectl apply -k {safe(out)}` (docs/kubernetes.md)",
        highlight=False,
        soft_wrap=True,
    )


@render_app.command("nvidia-device-plugin")
def device_plugin_command(
    config_path: str = typer.Argument(..., metavar="CONFIG", help="colo.yaml with a cluster inventory."),
    out: Path | None = typer.Option(None, "--out", help="Write the plugin's ConfigMap here (else stdout)."),
    namespace: str = typer.Option("nvidia-device-plugin", "--namespace", help="The plugin's namespace."),
    from_db: bool = _FROM_DB,
    db: str | None = _DB,
    as_json: bool = typer.Option(False, "--json", help="Print the verdicts (and the YAML) as JSON."),
) -> None:
    """NVIDIA device plugin `sharing.mps` config where every agent of a node asks the same; else say why not."""
    from colo.files import write_atomic
    from colo.render.device_plugin import render_device_plugin
    from colo.render.names import check_namespace

    check_namespace(namespace)
    config, _, p = _load(config_path, from_db, db)
    result = render_device_plugin(config, p, namespace=namespace)
    if out is not None and result.yaml is not None:
        write_atomic(out, result.yaml)
    if as_json:
        print_json(
            {
                "verdicts": [dataclasses.asdict(v) | {"eligible": v.eligible} for v in result.verdicts],
                "yaml": result.yaml,
            }
        )
        return
    for v in result.verdicts:
        if v.eligible:
            err_console.print(
                safe(f"node {v.node}: the device plugin can run its {len(v.agents)} agents ({v.config_name}); "
                     + "; ".join(v.notes)),
                highlight=False,
                soft_wrap=True,
            )
        else:
            err_console.print(
                safe(f"node {v.node}: needs colo's own mode (`colo render k8s`): " + "; ".join(v.reasons)),
                highlight=False,
                soft_wrap=True,
            )
    if out is None:
        typer.echo(result.yaml, nl=False)
    else:
        err_console.print(f"wrote {safe(out)}", highlight=False)


@render_app.command("systemd")
def systemd_command(
    config_path: str = typer.Argument(..., metavar="CONFIG", help="colo.yaml"),
    out: Path = typer.Option(..., "--out", help="Directory for the units (one folder per node on a cluster)."),
    agents: bool = typer.Option(False, "--agents", help="Also a unit and an MPS drop-in per agent."),
    colo_bin: str = typer.Option("/usr/local/bin/colo", "--colo-bin", help="Absolute path of colo on the host."),
    python: str = typer.Option("/usr/bin/python3", "--python", help="Python of the built-in agent."),
    config_on_host: str = typer.Option("/etc/colo/colo.yaml", "--config-path", help="colo.yaml on the host."),
    state_dir: str = typer.Option("/var/lib/colo", "--state-dir", help="COLO_STATE_DIR of colo up."),
    agent_user: str | None = typer.Option(None, "--agent-user", help="User= of every agent unit (one MPS user)."),
    from_db: bool = _FROM_DB,
    db: str | None = _DB,
    as_json: bool = typer.Option(False, "--json", help="Print what was written as JSON."),
) -> None:
    """Render systemd units: colo.service (colo up) and, with --agents, per-agent units and MPS drop-ins."""
    from colo.render.node_agent import NodeAgentLayout
    from colo.render.systemd import SystemdOptions, render_systemd

    for flag, value in (
        ("--colo-bin", colo_bin),
        ("--python", python),
        ("--config-path", config_on_host),
        ("--state-dir", state_dir),
    ):
        if not value.startswith("/"):
            raise UsageError(f"{flag} {value!r} must be an absolute path (systemd needs one)")
    config, _, p = _load(config_path, from_db, db)
    opts = SystemdOptions(
        colo_bin=colo_bin,
        python=python,
        config_path=config_on_host,
        layout=NodeAgentLayout(state_dir=state_dir),
        agent_user=agent_user,
    )
    files = render_systemd(config, p, source=Path(config_path).name, options=opts, agents=agents)
    written = _write_tree(out, files, prune=(".",))
    if as_json:
        print_json({"out": str(out), "files": sorted(files)})
        return
    console.print(f"wrote {len(written)} files to {safe(out)}", highlight=False)
    units = " ".join(sorted({Path(f).name for f in files if Path(f).name in ("colo.service", "colo-launcher.service")}))
    console.print(
        f"install: copy a node's files to /etc/systemd/system/, put the config at {safe(config_on_host)}, then "
        f"`systemctl daemon-reload && systemctl enable --now {units}`",
        highlight=False,
        soft_wrap=True,
    )


def explain_command(
    config_path: str = typer.Argument(..., metavar="CONFIG", help="colo.yaml"),
    from_db: bool = _FROM_DB,
    db: str | None = _DB,
) -> None:
    """Why each agent lands on its GPU (placement order, strategy, free room)."""
    from colo.spec.load import load_config
    from colo.supervise.planning import plan_config

    config = load_config(config_path)
    p = plan_config(config, from_db=from_db, db=db).plan
    pinned = [n for n, s in config.agents.items() if s.gpu is not None or s.node is not None]
    for line in explain_plan(p, reserve_per_gpu_bytes=config.policy.reserve_per_gpu_bytes, pinned=pinned):
        console.print(safe(line), highlight=False, soft_wrap=True)
    require_complete(p)


def _orchestrator_runs_agents_elsewhere() -> bool:
    """True when the supervisor's foreground run accepts ``run_agents`` (agents as pods or units)."""
    import inspect

    from colo.cli.up_cmd import up_foreground

    return "run_agents" in inspect.signature(up_foreground).parameters


def node_command(
    config_path: Path = typer.Argument(..., metavar="CONFIG", help="colo.yaml with the cluster inventory."),
    node: str = typer.Option(..., "--node", help="Which node of the inventory this machine is."),
    state_dir: Path | None = typer.Option(None, "--state-dir", help="State dir (MPS pipe dirs under <it>/mps)."),
    host: str | None = typer.Option(None, "--host", help="API address (overrides api.host; 0.0.0.0 in a pod)."),
    port: int | None = typer.Option(None, "--port", min=1, max=65535, help="API port (overrides api.port)."),
    no_agents: bool = typer.Option(
        False, "--no-agents", help="Agents run elsewhere (pods, systemd units): MPS daemons and the API only."
    ),
    no_api: bool = typer.Option(False, "--no-api", help="Do not serve the HTTP API."),
) -> None:
    """The node agent: `colo up --node NODE` (same code path), with index links to the MPS pipe dirs."""
    from colo.cli.up_cmd import up_foreground
    from colo.errors import SupervisorError
    from colo.gpu.mps.root import MpsRoot
    from colo.spec.load import load_config
    from colo.supervise.statedir import resolve_state_dir, running_orchestrator

    cfg = load_config(config_path)
    if cfg.gpus != "auto":
        nodes = sorted({row.node for row in cfg.gpus})
        if node not in nodes:
            raise UsageError(f"--node {node!r} is not a node of {config_path}'s inventory ({', '.join(nodes)})")
    if no_agents and not _orchestrator_runs_agents_elsewhere():
        raise UsageError(
            "--no-agents: this colo's orchestrator cannot yet leave the agents to Kubernetes or systemd",
            hint="run `colo node` without --no-agents to supervise the agents here (not with agent pods)",
        )
    api = cfg.api.model_copy(update={k: v for k, v in (("host", host), ("port", port)) if v is not None})
    cfg = cfg.model_copy(update={"api": api})
    sd = resolve_state_dir(cfg, state_dir)
    other = running_orchestrator(sd)
    if other is not None:
        raise SupervisorError(f"colo is already up with state dir {sd} (pid {other})", hint="`colo status` shows it")
    _link_gpus(MpsRoot.under_state_dir(sd).base_dir)
    extra: dict[str, Any] = {"run_agents": False} if no_agents else {}
    up_foreground(cfg, config_path, sd, use_mps=True, node=node, api=not no_api, **extra)


def _link_gpus(mps_root: Path) -> None:
    """Write ``by-index`` links for the GPUs NVML sees; without NVML, say so (agents then run without MPS)."""
    from colo.errors import ColoError
    from colo.render.node_agent import write_index_links

    try:
        from colo.gpu.nvml import NvmlBackend

        pairs = [(g.index, g.uuid) for g in NvmlBackend().gpus()]
    except ColoError as exc:
        err_console.print(f"[bold yellow]warning:[/] no GPU index links: {safe(exc)}", highlight=False, soft_wrap=True)
        return
    for link in write_index_links(mps_root, pairs):
        console.print(f"linked {safe(link)} -> {safe(link.readlink())}", highlight=False)


def register(app: typer.Typer) -> None:
    """Add ``colo render ...`` and ``colo node`` to ``app``."""
    render_app.command("explain")(explain_command)
    app.add_typer(render_app, name="render")
    app.command("node")(node_command)
