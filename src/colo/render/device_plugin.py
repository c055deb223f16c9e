"""``colo render nvidia-device-plugin``: NVIDIA's own MPS sharing where it can express the plan. Pure.

NVIDIA's k8s-device-plugin shares a GPU with MPS through its config file (README, "With CUDA MPS")::

    version: v1
    sharing:
      mps:
        resources:
        - name: nvidia.com/gpu
          replicas: <N>

Each of the N replicas of a GPU gets an *equal* fraction of it: the plugin's MPS daemon sets
``set_default_device_pinned_mem_limit <dev> <total/N>M`` and ``set_default_active_thread_percentage
<100/N>`` (``cmd/mps-control-daemon/mps/daemon.go``), the same sharing applies to every GPU of a node, and
any pod asking for ``nvidia.com/gpu: 1`` may get any replica. So the plugin can run a node's part of a plan
only when every agent there asks the same limit and the same priority class and none is pinned to a GPU;
then ``N = floor(GPU memory / limit)`` gives each replica at least the planned limit. Anything else —
unequal limits, mixed priorities, pins — needs colo's own mode (``colo render k8s``).
"""

from __future__ import annotations

from dataclasses import dataclass

from colo import units
from colo.errors import PlanError
from colo.gpu.mps import env as mps_env
from colo.plan.types import AgentPlan, Plan
from colo.render.yamlout import dump, dump_all
from colo.spec.config import ColoConfig

CONFIG_LABEL = "nvidia.com/device-plugin.config"


@dataclass(frozen=True)
class NodeVerdict:
    """Whether the plugin can run ``node``'s agents; ``config_name`` and ``replicas`` when it can."""

    node: str
    agents: tuple[str, ...]
    replicas: int | None
    config_name: str | None
    reasons: tuple[str, ...]
    notes: tuple[str, ...] = ()

    @property
    def eligible(self) -> bool:
        return self.replicas is not None


@dataclass(frozen=True)
class DevicePluginRender:
    """The plugin's ConfigMap (YAML text; None when no node qualifies) and a verdict per node with agents."""

    yaml: str | None
    verdicts: tuple[NodeVerdict, ...]


def _distinct(values: dict[str, str]) -> str:
    groups: dict[str, list[str]] = {}
    for agent, value in sorted(values.items()):
        groups.setdefault(value, []).append(agent)
    parts = []
    for value, agents in sorted(groups.items()):
        shown = ", ".join(agents[:3]) + (f" +{len(agents) - 3}" if len(agents) > 3 else "")
        parts.append(f"{value} ({shown})")
    return "; ".join(parts)


def node_verdict(node: str, agents: list[AgentPlan], config: ColoConfig) -> NodeVerdict:
    """Decide whether the plugin's equal-split MPS can stand for colo on ``node`` (see module docstring)."""
    names = tuple(a.name for a in agents)
    reasons: list[str] = []
    notes: list[str] = []
    limits = {a.name: units.format_size(a.limit_bytes) for a in agents}
    if len(set(limits.values())) > 1:
        reasons.append(f"unequal limits: {_distinct(limits)}")
    classes = {
        a.name: f"{a.priority} (client priority {a.client_priority}, {a.active_thread_pct}% SMs)" for a in agents
    }
    if len({(a.client_priority, a.active_thread_pct) for a in agents}) > 1:
        reasons.append(f"mixed priorities: {_distinct(classes)}")
    pinned = sorted(a.name for a in agents if config.agents[a.name].gpu is not None)
    if pinned:
        reasons.append(f"pinned to GPUs (the plugin hands out any replica): {', '.join(pinned)}")
    memories = {a.gpu.memory_total_bytes for a in agents if a.gpu is not None}
    if len(memories) > 1:
        reasons.append("GPUs of different memory sizes (the plugin applies one split to every GPU of a node)")
    if reasons:
        return NodeVerdict(node, names, None, None, tuple(reasons))
    limit = agents[0].limit_bytes
    total = min(memories)
    replicas = max(1, total // limit)
    per_replica = total // replicas
    notes.append(
        f"{replicas} replicas per GPU: {units.format_size(per_replica)} each (plan: {units.format_size(limit)})"
    )
    plugin_pct = 100 // replicas
    if plugin_pct != agents[0].active_thread_pct:
        notes.append(f"the plugin caps each client at {plugin_pct}% of the SMs (plan: {agents[0].active_thread_pct}%)")
    if agents[0].client_priority != 0:
        notes.append(
            f"the plugin does not set MPS client priority: add {mps_env.CLIENT_PRIORITY}="
            f"{agents[0].client_priority} to the pods' env"
        )
    return NodeVerdict(node, names, replicas, f"colo-mps-x{replicas}", (), tuple(notes))


def plugin_config(replicas: int) -> dict[str, object]:
    """The device plugin's config file (``version: v1``) sharing ``nvidia.com/gpu`` in ``replicas`` by MPS."""
    return {
        "version": "v1",
        "flags": {"migStrategy": "none"},
        "sharing": {"mps": {"resources": [{"name": "nvidia.com/gpu", "replicas": replicas}]}},
    }


def render_device_plugin(
    config: ColoConfig, plan: Plan, *, namespace: str = "nvidia-device-plugin"
) -> DevicePluginRender:
    """Verdicts per node, and a ConfigMap of plugin configs (one key per distinct replica count) for the
    nodes that qualify, with the ``kubectl label`` commands that select them in its header.

    Raises PlanError, listing each node's reasons, when no node qualifies (colo's own mode is needed).
    """
    by_node: dict[str, list[AgentPlan]] = {}
    for a in plan.placed:
        assert a.gpu is not None
        by_node.setdefault(a.gpu.node, []).append(a)
    verdicts = tuple(node_verdict(n, agents, config) for n, agents in sorted(by_node.items()))
    eligible = [v for v in verdicts if v.eligible]
    if not eligible:
        why = "; ".join(f"node {v.node}: {', '.join(v.reasons)}" for v in verdicts) or "no agent is placed"
        raise PlanError(
            f"NVIDIA's device plugin cannot express this plan (it splits every GPU of a node equally): {why}",
            hint="use colo's own mode: `colo render k8s CONFIG --out DIR`",
        )
    data = {
        v.config_name: dump(plugin_config(v.replicas))
        for v in sorted(eligible, key=lambda v: v.replicas or 0)
        if v.config_name and v.replicas
    }
    header = [
        "NVIDIA k8s-device-plugin MPS configs rendered by `colo render nvidia-device-plugin`.",
        f"Use with the plugin's helm chart: --set config.name=colo-device-plugin-configs (namespace {namespace}),",
        "then label each node with the config it should use:",
        *(f"  kubectl label node {v.node} --overwrite {CONFIG_LABEL}={v.config_name}" for v in eligible),
        "Pods then request `nvidia.com/gpu: 1` and get one equal MPS replica; see docs/kubernetes.md.",
    ]
    for v in verdicts:
        if not v.eligible:
            header.append(f"node {v.node} needs colo's own mode (colo render k8s): {'; '.join(v.reasons)}")
    configmap = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "colo-device-plugin-configs",
            "namespace": namespace,
            "labels": {"app.kubernetes.io/part-of": "colo", "app.kubernetes.io/managed-by": "colo"},
        },
        "data": data,
    }
    return DevicePluginRender(yaml=dump_all([configmap], header="\n".join(header)), verdicts=verdicts)
