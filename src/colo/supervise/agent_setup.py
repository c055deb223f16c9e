"""How one planned agent is launched: argv, environment (MPS client settings), health check, restart rules.

Two agents whose :class:`~colo.launch.runner.LaunchSpec` compare equal need no restart: ``colo apply``
restarts exactly the agents whose limit, placement, command, env or cwd changed.
"""

from __future__ import annotations

from pathlib import Path

from colo.gpu.mps.env import PINNED_DEVICE_MEM_LIMIT, client_env
from colo.gpu.mps.root import MpsRoot
from colo.launch.runner import LaunchSpec
from colo.plan.types import AgentPlan
from colo.spec.config import ColoConfig, HealthCheck
from colo.supervise.agent import AgentSetup
from colo.supervise.policy import RestartRules
from colo.units import format_size

#: Built-in agents without a ``port`` get ``DEFAULT_PORT_BASE + their position`` among the agents (by name).
DEFAULT_PORT_BASE = 9100
#: The built-in agent's /health is probed this often once RUNNING (seconds: every tick), each probe bounded by
#: BUILTIN_HEALTH_TIMEOUT_SECS (its own device round trip answers within 1 s, so 1.5 s is "hung"), and two
#: failed probes in a row restart it: a hung (SIGSTOPped) agent fails its first probe within ~2 s and is
#: killed within ~4 s. One failure alone does not restart it (a /health queued behind a burst of /infer
#: calls). Used for every field of the agent's ``health`` the user did not set.
BUILTIN_HEALTH_INTERVAL_SECS = 0.5
BUILTIN_HEALTH_TIMEOUT_SECS = 1.5
BUILTIN_HEALTH_FAILURES = 2


def builtin_port(config: ColoConfig, name: str) -> int:
    """The port of agent ``name`` for the built-in agent: its ``port``, else a stable default."""
    spec = config.agents[name]
    if spec.port is not None:
        return spec.port
    return DEFAULT_PORT_BASE + sorted(config.agents).index(name)


def agent_setup(config: ColoConfig, ap: AgentPlan, *, config_copy: Path, mps_root: MpsRoot | None) -> AgentSetup:
    """How ``ap`` runs: its ``command`` (else colo's built-in agent reading ``config_copy``), the MPS client
    environment of its GPU's daemon under ``mps_root`` when the plan runs MPS on its GPU (``ap.mps``; else,
    or with ``mps_root`` None, ``CUDA_VISIBLE_DEVICES`` only, and the built-in agent's allocator cap), its
    own ``env``, its health check (the built-in agent's ``/health`` when it has none) and restart rules.

    Raises MpsError for an agent without a limit in the plan.
    """
    spec = config.agents[ap.name]
    health: HealthCheck = spec.health
    if spec.command is not None:
        argv = tuple(spec.command)
    else:
        from colo.modelserver.command import builtin_agent_command, health_url

        port = builtin_port(config, ap.name)
        argv = tuple(builtin_agent_command(ap.name, config_copy, port))
        if health.type == "none":
            health = health.model_copy(update={"type": "http", "url": health_url(port)})
        health = _builtin_health(health)
    env: dict[str, str] = {"COLO_AGENT": ap.name}
    uuid = ap.gpu.uuid if ap.gpu is not None else None
    if uuid and mps_root is not None and ap.mps:
        env.update(client_env(ap, mps_root.for_gpu(uuid), gpu_uuid=uuid))
    elif uuid:
        env["CUDA_VISIBLE_DEVICES"] = uuid
    if not ap.mps and ap.enforcement == "allocator-cap" and spec.command is None:
        from colo.modelserver.command import memory_cap_env

        env.update(memory_cap_env(ap.limit_bytes))
    env.update(spec.env)
    launch = LaunchSpec(
        argv=argv,
        env=tuple(sorted(env.items())),
        cwd=spec.cwd,
        gpu=ap.gpu.key if ap.gpu is not None else None,
        gpu_uuid=uuid,
        limit_bytes=ap.limit_bytes,
    )
    return AgentSetup(
        name=ap.name,
        launch=launch,
        health=health,
        rules=RestartRules.from_spec(spec.restart),
        priority=ap.priority,
        requirement_bytes=ap.requirement_bytes,
        models=ap.model_ids,
    )


def _builtin_health(health: HealthCheck) -> HealthCheck:
    """The built-in agent's probe cadence for every field the user left unset (see the constants above)."""
    fast = {
        "interval_secs": BUILTIN_HEALTH_INTERVAL_SECS,
        "timeout_secs": BUILTIN_HEALTH_TIMEOUT_SECS,
        "failures_before_restart": BUILTIN_HEALTH_FAILURES,
    }
    update = {k: v for k, v in fast.items() if k not in health.model_fields_set}
    return health.model_copy(update=update) if update else health


def describe_change(old: AgentSetup, new: AgentSetup) -> str:
    """``"limit 1 GiB -> 1.5 GiB, env"``: what differs between two launch specs."""
    a, b = old.launch, new.launch
    parts = []
    if a.limit_bytes != b.limit_bytes:
        parts.append(f"limit {format_size(a.limit_bytes)} -> {format_size(b.limit_bytes)}")
    if a.gpu != b.gpu or a.gpu_uuid != b.gpu_uuid:
        parts.append(f"placement {a.gpu} -> {b.gpu}")
    if a.argv != b.argv:
        parts.append("command")
    mps_before, mps_after = a.mps_client, b.mps_client
    if mps_before != mps_after:
        parts.append("MPS on" if mps_after else "MPS off")
    from colo.modelserver.command import MEMORY_CAP_VAR

    limit_keys = {PINNED_DEVICE_MEM_LIMIT, MEMORY_CAP_VAR}
    if mps_before == mps_after and {k: v for k, v in a.env if k not in limit_keys} != {k: v for k, v in b.env if k not in limit_keys}:
        parts.append("env")
    if a.cwd != b.cwd:
        parts.append("cwd")
    return ", ".join(parts) or "launch spec"

