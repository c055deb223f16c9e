"""``colo render systemd``: units for ``colo up`` and, when asked, for each agent. Pure (text out).

Per node of the plan (``<node>/`` when the inventory has several nodes, the top directory for one):

- ``colo.service``: ``colo up CONFIG`` (``--node NODE`` on a cluster), Type=simple, restarted on failure,
  ``COLO_STATE_DIR`` and ``StateDirectory=`` for its state, ``KillMode=mixed`` so colo stops its agents in
  order before systemd's SIGKILL reaches what is left.
- ``colo-launcher.service`` (without ``agents``, when the node runs a built-in agent and ``policy.launcher`` is
  ``fork``): ``colo launcher serve --models-of CONFIG``, the node launcher (torch and transformers imported
  before ``colo up``; ``colo.service`` wants it and starts after it). ``KillMode=process``: the agents colo forks
  from it live in its cgroup, and stopping the launcher must not stop them.
- with ``agents=True``: ``colo.service`` runs the node agent ``colo node CONFIG --node NODE --no-agents``
  (MPS daemons, index links, API; no agents) and each agent planned on the node gets
  ``colo-agent-<name>.service`` (its command, restart policy, stop signal and timeout) and a drop-in
  ``colo-agent-<name>.service.d/10-colo-mps.conf`` with its MPS client environment: the seed's "systemd
  environment examples", generated. A user who already has a unit for an agent copies the drop-in directory
  next to it under the unit's own name.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from colo.gpu.mps import env as mps_env
from colo.modelserver.command import builtin_agent_command
from colo.plan.types import AgentPlan, Plan
from colo.render.names import agent_object_names
from colo.render.node_agent import NodeAgentLayout, agent_client_env
from colo.spec.config import AgentSpec, ColoConfig

HEADER = "# Rendered by `colo render systemd` from {source}. Re-render instead of editing.\n"
_RESTART = {"always": "always", "on-failure": "on-failure", "never": "no"}


@dataclass(frozen=True)
class SystemdOptions:
    """Host paths: the colo executable, the Python of the built-in agent, the config, the state dir."""

    colo_bin: str = "/usr/local/bin/colo"
    python: str = "/usr/bin/python3"
    config_path: str = "/etc/colo/colo.yaml"
    layout: NodeAgentLayout = field(default_factory=NodeAgentLayout)
    agent_user: str | None = None


def _escape(text: str) -> str:
    """Protect ``%`` specifiers; systemd expands them in ExecStart= and Environment=."""
    return text.replace("%", "%%")


def quote_arg(arg: str) -> str:
    """One ExecStart= word: double-quoted (with ``\\`` and ``"`` escaped) when it needs to be; ``$`` doubled."""
    text = _escape(arg).replace("$", "$$")
    if text and not any(c in text for c in " \t\"'\\;"):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def exec_line(argv: list[str]) -> str:
    """``ExecStart=`` value for ``argv``."""
    return " ".join(quote_arg(a) for a in argv)


def environment_line(key: str, value: str) -> str:
    """``Environment="KEY=value"`` with quotes and backslashes escaped."""
    pair = _escape(f"{key}={value}").replace("\\", "\\\\").replace('"', '\\"')
    return f'Environment="{pair}"'


def _secs(value: float) -> str:
    return f"{max(0, math.ceil(value))}s"


LAUNCHER_UNIT = "colo-launcher.service"


def launcher_unit(opts: SystemdOptions) -> str:
    """``colo-launcher.service``: the node launcher, with the environment ``colo.service`` gives ``colo up`` (a
    variable read at process start that differs would stop colo from forking from it)."""
    argv = [opts.colo_bin, "launcher", "serve", "--models-of", opts.config_path]
    return "\n".join(
        [
            "[Unit]",
            "Description=colo node launcher: torch and transformers imported before colo up forks its agents",
            "After=nvidia-persistenced.service",
            "",
            "[Service]",
            "Type=simple",
            f"ExecStart={exec_line(argv)}",
            environment_line("PYTHONUNBUFFERED", "1"),
            # Its socket's directory (/run/colo): private, as the launcher requires.
            "RuntimeDirectory=colo",
            "RuntimeDirectoryMode=0700",
            "Restart=on-failure",
            "RestartSec=5s",
            # Agents forked from it run in this unit's cgroup: stopping the launcher stops only the launcher.
            "KillMode=process",
            "",
            "[Install]",
            "WantedBy=multi-user.target",
            "",
        ]
    )


def node_unit(
    config: ColoConfig,
    opts: SystemdOptions,
    *,
    node: str | None,
    agents_by_systemd: bool,
    stop_secs: float,
    launcher: bool = False,
) -> str:
    """``colo.service`` for ``node`` (None: a single host); ``launcher``: it wants ``colo-launcher.service``."""
    if agents_by_systemd:
        # The node agent: MPS daemons (and the index links the drop-ins' pipe dirs go through), no agents.
        argv = [opts.colo_bin, "node", opts.config_path, "--node", node or "local", "--no-agents"]
    else:
        argv = [opts.colo_bin, "up", opts.config_path] + (["--node", node] if node is not None else [])
    state = opts.layout.state_dir
    lines = [
        "[Unit]",
        (
            f"Description=colo node agent on {node}: MPS daemons and API; agents run as colo-agent-*.service"
            if agents_by_systemd
            else f"Description=colo: model agents on shared GPUs under CUDA MPS ({' '.join(argv[1:2] + argv[3:])})"
        ),
        "Wants=network-online.target" + (f" {LAUNCHER_UNIT}" if launcher else ""),
        "After=network-online.target nvidia-persistenced.service" + (f" {LAUNCHER_UNIT}" if launcher else ""),
        "StartLimitIntervalSec=300",
        "StartLimitBurst=5",
        "",
        "[Service]",
        "Type=simple",
        f"ExecStart={exec_line(argv)}",
        environment_line("COLO_STATE_DIR", state),
        environment_line("PYTHONUNBUFFERED", "1"),
    ]
    if state.startswith("/var/lib/") and "/" not in state[len("/var/lib/") :]:
        lines.append(f"StateDirectory={state[len('/var/lib/') :]}")
    lines += [
        f"WorkingDirectory={state}",
        "Restart=on-failure",
        "RestartSec=5s",
        # colo stops its agents itself (each with its stop_wait_secs); then systemd kills what is left.
        "KillMode=mixed",
        f"TimeoutStopSec={_secs(stop_secs + 30)}",
        "LimitNOFILE=65536",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
        "",
    ]
    return "\n".join(lines)


def agent_argv(name: str, spec: AgentSpec, opts: SystemdOptions) -> list[str]:
    """The agent's own command, or the built-in agent (on its configured port, default 8000)."""
    if spec.command is not None:
        return list(spec.command)
    return builtin_agent_command(name, opts.config_path, spec.port or 8000, python=opts.python)


def agent_unit(a: AgentPlan, spec: AgentSpec, opts: SystemdOptions, *, node_unit_name: str = "colo.service") -> str:
    """``colo-agent-<name>.service``: the agent's process; its MPS environment is in the drop-in."""
    assert a.gpu is not None
    r = spec.restart
    lines = [
        "[Unit]",
        f"Description=colo agent {a.name} (MPS client on {a.gpu.label}, limit from the plan)",
        # The MPS daemon of its GPU is the node agent's: start after it, stop with it.
        f"Requires={node_unit_name}",
        f"After={node_unit_name}",
        f"PartOf={node_unit_name}",
        # max_retries failed starts in a row (within 5 minutes) and systemd gives up, as colo's FATAL.
        "StartLimitIntervalSec=300",
        f"StartLimitBurst={r.max_retries + 1}",
        "",
        "[Service]",
        "Type=simple",
        f"ExecStart={exec_line(agent_argv(a.name, spec, opts))}",
    ]
    if spec.cwd:
        lines.append(f"WorkingDirectory={spec.cwd}")
    if opts.agent_user:
        lines.append(f"User={opts.agent_user}")
    for key, value in sorted(spec.env.items()):
        lines.append(environment_line(key, value))
    lines += [
        environment_line("COLO_AGENT", a.name),
        environment_line("PYTHONUNBUFFERED", "1"),
        f"Restart={_RESTART[r.policy]}",
        f"RestartSec={_secs(r.backoff_initial_secs)}",
    ]
    lines += [
        f"KillSignal=SIG{r.stop_signal}",
        f"TimeoutStopSec={_secs(r.stop_wait_secs)}",
        "",
        "[Install]",
        f"WantedBy={node_unit_name}",
        "",
    ]
    return "\n".join(lines)


def mps_dropin(a: AgentPlan, opts: SystemdOptions) -> str:
    """``10-colo-mps.conf``: the MPS client environment of ``a`` (pipe dir of its GPU, limit, %, priority)."""
    assert a.gpu is not None
    env = agent_client_env(a, a.gpu, opts.layout)
    lines = [
        f"# MPS client environment of agent {a.name} on {a.gpu.label}: limit "
        f"{env[mps_env.PINNED_DEVICE_MEM_LIMIT]}, priority {a.priority}.",
        "# The pipe dir selects the GPU: its daemon exposes only that GPU, as device 0.",
        "[Service]",
        *(environment_line(k, v) for k, v in sorted(env.items())),
        "",
    ]
    return "\n".join(lines)


def render_systemd(
    config: ColoConfig,
    plan: Plan,
    *,
    source: str = "colo.yaml",
    options: SystemdOptions | None = None,
    agents: bool = False,
) -> dict[str, str]:
    """Files (relative path -> text): per node ``colo.service`` (and ``colo-launcher.service`` where colo forks
    built-in agents) and, with ``agents``, agent units and drop-ins.

    Raises ConfigError for agent names that cannot become unit names (the same rule as Kubernetes names).
    """
    opts = options or SystemdOptions()
    nodes = sorted({g.gpu.node for g in plan.gpus})
    multi = len(nodes) > 1
    unit_names = agent_object_names(a.name for a in plan.placed)
    header = HEADER.format(source=source)
    files: dict[str, str] = {}
    for node in nodes:
        prefix = f"{node}/" if multi else ""
        on_node = [a for a in plan.placed if a.gpu is not None and a.gpu.node == node]
        stop = max((config.agents[a.name].restart.stop_wait_secs for a in on_node), default=10.0)
        forks = (
            not agents
            and config.policy.launcher == "fork"
            and any(config.agents[a.name].command is None for a in on_node)
        )
        files[f"{prefix}colo.service"] = header + node_unit(
            config,
            opts,
            node=node if multi or agents else None,
            agents_by_systemd=agents,
            stop_secs=stop,
            launcher=forks,
        )
        if forks:
            files[f"{prefix}{LAUNCHER_UNIT}"] = header + launcher_unit(opts)
        if not agents:
            continue
        for a in sorted(on_node, key=lambda p: unit_names[p.name]):
            unit = f"colo-agent-{unit_names[a.name]}.service"
            files[f"{prefix}{unit}"] = header + agent_unit(a, config.agents[a.name], opts)
            files[f"{prefix}{unit}.d/10-colo-mps.conf"] = header + mps_dropin(a, opts)
    return files
