"""``colo render k8s``: a plan over a cluster inventory as plain Kubernetes manifests. Pure (text out).

What is rendered (every object in namespace ``options.namespace``):

- ``namespace.yaml``: the Namespace, labelled for the *privileged* Pod Security level (host IPC and
  hostPath volumes are refused by *baseline* and *restricted*).
- ``configmap.yaml``: ``colo-config`` with ``colo.yaml`` (the user's file as written) and
  ``mps_allocation_config.json`` (the plan in the seed's format).
- ``node-agent-daemonset.yaml``: the node agent (``colo node``) on every planned GPU node carrying the node
  label: one MPS control daemon per GPU with its pipe dir under the host path ``options.mps_root``, its API
  and ``/metrics`` on the pod's port. Host access: host IPC, the host's ``/dev/shm``, the MPS root and the
  state dir; not privileged, no host network, no host PID, no service-account token.
- ``node-agent-service.yaml``: a headless Service over the node agents (port ``api``; Prometheus scrapes
  ``/metrics``); ``servicemonitor.yaml`` (prometheus-operator) when asked. The API token comes from the
  Secret ``options.api_token_secret`` (key ``token``), which the cluster owner creates: no secret is
  rendered into files that end up in git.
- ``agents/<name>.yaml``: per agent a Deployment of one pod pinned to its planned node (required node
  affinity on ``kubernetes.io/hostname``), sharing host IPC, ``/dev/shm`` and its GPU's pipe dir with the
  node agent, with the MPS client environment of its plan (``CUDA_MPS_PINNED_DEVICE_MEM_LIMIT``, active
  thread %, client priority), its GPU made visible by the NVIDIA container runtime
  (``NVIDIA_VISIBLE_DEVICES``, RuntimeClass ``options.runtime_class``), probes from its health check, and a
  Service when it has a port. ``strategy: Recreate``: an old and a new pod of one agent never hold GPU memory
  at the same time, which the plan did not budget for.
- ``kustomization.yaml`` listing all of the above; ``placement.txt``: why each agent landed where it did.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from colo import __version__, units
from colo.errors import ConfigError
from colo.gpu.mps import env as mps_env
from colo.modelserver.command import builtin_agent_command
from colo.plan.allocation_doc import allocation_document
from colo.plan.explain import explain_plan
from colo.plan.types import AgentPlan, Plan
from colo.render.names import agent_object_names, check_labels, check_namespace, check_node_names
from colo.render.node_agent import NodeAgentLayout, agent_client_env
from colo.render.yamlout import dump, dump_all
from colo.spec.config import AgentSpec, ColoConfig, HealthCheck

KUBERNETES_VERSION = "1.30"
"""The Kubernetes version whose OpenAPI schema the rendered objects are validated against (tests)."""

CONFIG_MAP = "colo-config"
NODE_AGENT = "colo-node-agent"
CONFIG_MOUNT = "/etc/colo"
POD_CONFIG_PATH = f"{CONFIG_MOUNT}/colo.yaml"
BUILTIN_AGENT_PORT = 8000
HEADER = "Rendered by `colo render k8s` from {source}. Re-render instead of editing."


@dataclass(frozen=True)
class K8sOptions:
    """Choices a cluster owner makes that colo.yaml does not hold. Sizes in Kubernetes quantity strings."""

    namespace: str = "colo"
    image: str = f"colo:{__version__}"
    agent_image: str | None = None
    service_monitor: bool = False
    runtime_class: str | None = "nvidia"
    node_label: tuple[str, str] = ("colo.dev/gpu-node", "true")
    agent_uid: int = 1000
    agent_cpu_request: str = "500m"
    api_token_secret: str = "colo-api-token"
    layout: NodeAgentLayout = field(default_factory=NodeAgentLayout)


@dataclass(frozen=True)
class Rendered:
    """Files (relative path -> text) and notes for the person rendering (what Kubernetes cannot express)."""

    files: dict[str, str]
    notes: tuple[str, ...]


def _labels(component: str, instance: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": component,
        "app.kubernetes.io/instance": instance,
        "app.kubernetes.io/part-of": "colo",
        "app.kubernetes.io/managed-by": "colo",
    }


def _meta(
    name: str, namespace: str, labels: Mapping[str, str], annotations: Mapping[str, str] | None = None
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "labels": dict(labels)}
    if annotations:
        meta["annotations"] = dict(annotations)
    return meta


def _secs(value: float) -> int:
    """Kubernetes wants whole seconds, at least 1."""
    return max(1, math.ceil(value))


def _mib_quantity(value_bytes: int) -> str:
    return f"{max(1, -(-value_bytes // units.MIB))}Mi"


def _hostpath(name: str, path: str, kind: str) -> dict[str, Any]:
    return {"name": name, "hostPath": {"path": path, "type": kind}}


_GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


def _probe_handler(name: str, spec: AgentSpec, port: int | None) -> dict[str, Any] | None:
    """The probe action for an agent's health check, or None when it has none."""
    hc: HealthCheck = spec.health
    if hc.type == "http":
        assert hc.url is not None  # the spec guarantees it
        parts = urlsplit(hc.url)
        if parts.scheme not in ("http", "https"):
            raise ConfigError(
                f"health url {hc.url!r} is not http(s); Kubernetes probes need http or https",
                field=f"agents.{name}.health.url",
            )
        try:
            url_port = parts.port
        except ValueError as exc:
            raise ConfigError(f"health url {hc.url!r} has a bad port", field=f"agents.{name}.health.url") from exc
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        return {
            "httpGet": {
                "path": path,
                "port": url_port or (443 if parts.scheme == "https" else 80),
                "scheme": parts.scheme.upper(),
            }
        }
    if hc.type == "tcp":
        assert hc.port is not None
        return {"tcpSocket": {"port": hc.port}}
    if hc.type == "command":
        assert hc.command is not None
        return {"exec": {"command": list(hc.command)}}
    if spec.command is None and port is not None:
        # The built-in agent answers /health once its models are loaded.
        return {"httpGet": {"path": "/health", "port": port, "scheme": "HTTP"}}
    return None


def _probes(name: str, spec: AgentSpec, port: int | None) -> dict[str, Any]:
    handler = _probe_handler(name, spec, port)
    if handler is None:
        return {}
    hc = spec.health
    period = _secs(hc.interval_secs)
    timing = {"periodSeconds": period, "timeoutSeconds": _secs(hc.timeout_secs)}
    return {
        # Startup: up to startup_timeout_secs to load the models before liveness counts.
        "startupProbe": {
            **handler,
            **timing,
            "failureThreshold": max(1, math.ceil(hc.startup_timeout_secs / period)),
        },
        "readinessProbe": {**handler, **timing, "failureThreshold": 1},
        "livenessProbe": {**handler, **timing, "failureThreshold": hc.failures_before_restart},
    }


def _agent_command(name: str, spec: AgentSpec) -> tuple[list[str], int | None]:
    """``(argv, port)`` of the agent's container; the built-in agent listens on the pod's address."""
    if spec.command is not None:
        return list(spec.command), spec.port
    port = spec.port or BUILTIN_AGENT_PORT
    argv = builtin_agent_command(name, POD_CONFIG_PATH, port, host="0.0.0.0", python="python3")
    return argv, port


def _node_affinity(node: str, labels: Mapping[str, str]) -> dict[str, Any]:
    exprs = [{"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}]
    exprs += [{"key": k, "operator": "In", "values": [v]} for k, v in sorted(labels.items())]
    return {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": exprs}]}
        }
    }


def _agent_objects(
    a: AgentPlan,
    k8s_name: str,
    spec: AgentSpec,
    node_labels: Mapping[str, str],
    opts: K8sOptions,
    config_hash: str,
    notes: dict[str, list[str]],
) -> list[dict[str, Any]]:
    gpu = a.gpu
    assert gpu is not None
    ns = opts.namespace
    layout = opts.layout
    argv, port = _agent_command(a.name, spec)
    labels = {**_labels("colo-agent", k8s_name), "colo.dev/agent": k8s_name, "colo.dev/priority": a.priority}
    selector = {"app.kubernetes.io/name": "colo-agent", "app.kubernetes.io/instance": k8s_name}
    pipe_dir = layout.pipe_dir(gpu)
    env = agent_client_env(a, gpu, layout)
    env.update(spec.env)
    env["NVIDIA_VISIBLE_DEVICES"] = gpu.uuid or str(gpu.index)
    env["NVIDIA_DRIVER_CAPABILITIES"] = "compute,utility"
    env["COLO_AGENT"] = a.name
    annotations = {
        "colo.dev/agent-name": a.name,
        "colo.dev/gpu": gpu.key,
        "colo.dev/mps-pinned-device-mem-limit": units.mps_limit(a.limit_bytes),
        "colo.dev/requirement": units.format_size_exact(a.requirement_bytes),
        "colo.dev/models": ",".join(a.model_ids),
    }
    container: dict[str, Any] = {
        "name": "agent",
        "image": opts.agent_image or opts.image,
        "command": argv,
        "env": [{"name": k, "value": v} for k, v in sorted(env.items())],
    }
    if spec.cwd:
        container["workingDir"] = spec.cwd
    if port is not None:
        container["ports"] = [{"name": "http", "containerPort": port, "protocol": "TCP"}]
    container.update(_probes(a.name, spec, port))
    container["resources"] = {
        # Host memory: the weights pass through host RAM on their way to the GPU.
        "requests": {"cpu": opts.agent_cpu_request, "memory": _mib_quantity(a.requirement_bytes)},
    }
    # The whole MPS root, at the host's path: the pipe dir may be reached through the node agent's index link.
    mounts: list[dict[str, Any]] = [
        {"name": "mps-root", "mountPath": layout.mps_root},
        {"name": "dev-shm", "mountPath": "/dev/shm"},
    ]
    if spec.command is None:
        mounts.append({"name": "config", "mountPath": CONFIG_MOUNT, "readOnly": True})
    container["volumeMounts"] = mounts
    container["securityContext"] = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
    wait = {
        "name": "wait-for-mps",
        "image": opts.image,
        "command": [
            "sh",
            "-c",
            f'until [ -e "${mps_env.PIPE_DIRECTORY}/control" ]; do echo "waiting for the MPS daemon in '
            f'${mps_env.PIPE_DIRECTORY}"; sleep 2; done',
        ],
        "env": [{"name": k, "value": v} for k, v in mps_env.daemon_location(pipe_dir).items()],
        "volumeMounts": [{"name": "mps-root", "mountPath": layout.mps_root, "readOnly": True}],
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
    }
    volumes = [
        _hostpath("mps-root", layout.mps_root, "Directory"),
        _hostpath("dev-shm", "/dev/shm", "Directory"),
    ]
    if spec.command is None:
        volumes.append({"name": "config", "configMap": {"name": CONFIG_MAP}})
    pod_spec: dict[str, Any] = {
        "affinity": _node_affinity(gpu.node, node_labels),
        "tolerations": [dict(_GPU_TOLERATION)],
        # MPS clients and their server talk through shared memory: the pod shares the host's IPC namespace.
        "hostIPC": True,
        "automountServiceAccountToken": False,
        # One MPS server serves one Linux user: every agent pod runs as the same uid.
        "securityContext": {
            "runAsUser": opts.agent_uid,
            "runAsGroup": opts.agent_uid,
            "runAsNonRoot": True,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "terminationGracePeriodSeconds": _secs(spec.restart.stop_wait_secs),
        "initContainers": [wait],
        "containers": [container],
        "volumes": volumes,
    }
    if opts.runtime_class:
        pod_spec["runtimeClassName"] = opts.runtime_class
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(k8s_name, ns, labels, annotations),
        "spec": {
            "replicas": 1,
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {
                    "labels": labels,
                    "annotations": {**annotations, "colo.dev/config-sha256": config_hash},
                },
                "spec": pod_spec,
            },
        },
    }
    objs = [deployment]
    if port is not None:
        objs.append(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": _meta(k8s_name, ns, labels),
                "spec": {
                    "selector": selector,
                    "ports": [{"name": "http", "port": port, "targetPort": "http", "protocol": "TCP"}],
                },
            }
        )
    if spec.restart.policy != "always":
        notes.setdefault(
            f"restart policy {spec.restart.policy!r} becomes Kubernetes' 'Always' (a Deployment's pod is "
            "always restarted, with the kubelet's backoff of up to 5 minutes)",
            [],
        ).append(a.name)
    if spec.restart.stop_signal != "TERM":
        notes.setdefault(
            f"stop_signal {spec.restart.stop_signal} is not sent: Kubernetes stops a pod with SIGTERM", []
        ).append(a.name)
    return objs


def _note_lines(notes: Mapping[str, list[str]]) -> list[str]:
    """One line per kind of note, naming up to six agents."""
    out = []
    for message, agents in sorted(notes.items()):
        shown = ", ".join(agents[:6]) + (f" and {len(agents) - 6} more" if len(agents) > 6 else "")
        out.append(f"{message}: {shown}")
    return out


def _node_agent_objects(
    nodes: Sequence[str], opts: K8sOptions, config: ColoConfig, config_hash: str
) -> list[dict[str, Any]]:
    ns = opts.namespace
    layout = opts.layout
    labels = _labels("colo-node-agent", NODE_AGENT)
    selector = {"app.kubernetes.io/name": "colo-node-agent", "app.kubernetes.io/instance": NODE_AGENT}
    port = config.api.port
    # TCP probes: the API answers reads only with the token once it listens beyond loopback.
    probe = {"tcpSocket": {"port": "api"}, "periodSeconds": 10}
    key, value = opts.node_label
    container: dict[str, Any] = {
        "name": "node-agent",
        "image": opts.image,
        "command": layout.node_agent_argv(POD_CONFIG_PATH, "$(NODE_NAME)", port),
        "env": [
            # One token for every node agent (and Prometheus): a Secret the cluster owner creates.
            {
                "name": "COLO_API_TOKEN",
                "valueFrom": {"secretKeyRef": {"name": opts.api_token_secret, "key": "token"}},
            },
            {"name": "COLO_STATE_DIR", "value": layout.state_dir},
            {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
            {"name": "NVIDIA_DRIVER_CAPABILITIES", "value": "compute,utility"},
            {"name": "NVIDIA_VISIBLE_DEVICES", "value": "all"},
        ],
        "ports": [{"name": "api", "containerPort": port, "protocol": "TCP"}],
        "startupProbe": {**probe, "failureThreshold": 30},
        "readinessProbe": {**probe, "failureThreshold": 1},
        "livenessProbe": {**probe, "failureThreshold": 3},
        "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}},
        "volumeMounts": [
            {"name": "config", "mountPath": CONFIG_MOUNT, "readOnly": True},
            {"name": "state", "mountPath": layout.state_dir},
            {"name": "dev-shm", "mountPath": "/dev/shm"},
        ],
        # Root inside the pod: the MPS control daemon starts each MPS server as the uid of its clients.
        # Not privileged, no privilege escalation: colo never changes GPU settings.
        "securityContext": {"privileged": False, "allowPrivilegeEscalation": False, "runAsUser": 0},
    }
    pod_spec: dict[str, Any] = {
        "nodeSelector": {key: value},
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {
                            "matchExpressions": [
                                {"key": "kubernetes.io/hostname", "operator": "In", "values": list(nodes)}
                            ]
                        }
                    ]
                }
            }
        },
        "tolerations": [dict(_GPU_TOLERATION)],
        "hostIPC": True,
        "automountServiceAccountToken": False,
        "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
        "terminationGracePeriodSeconds": 30,
        "containers": [container],
        "volumes": [
            {"name": "config", "configMap": {"name": CONFIG_MAP}},
            # The state dir holds the MPS root (<state_dir>/mps/<uuid>/pipe) that agent pods mount.
            _hostpath("state", layout.state_dir, "DirectoryOrCreate"),
            _hostpath("dev-shm", "/dev/shm", "Directory"),
        ],
    }
    if opts.runtime_class:
        pod_spec["runtimeClassName"] = opts.runtime_class
    daemonset = {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": _meta(NODE_AGENT, ns, labels),
        "spec": {
            "selector": {"matchLabels": selector},
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}},
            "template": {
                "metadata": {"labels": labels, "annotations": {"colo.dev/config-sha256": config_hash}},
                "spec": pod_spec,
            },
        },
    }
    return [daemonset]


def _service_objects(opts: K8sOptions, config: ColoConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    labels = _labels("colo-node-agent", NODE_AGENT)
    selector = {"app.kubernetes.io/name": "colo-node-agent", "app.kubernetes.io/instance": NODE_AGENT}
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(NODE_AGENT, opts.namespace, labels),
        "spec": {
            # Headless: one address per node agent, so each node's /metrics is scraped on its own.
            "clusterIP": "None",
            "selector": selector,
            "ports": [{"name": "api", "port": config.api.port, "targetPort": "api", "protocol": "TCP"}],
        },
    }
    monitor = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": _meta(NODE_AGENT, opts.namespace, labels),
        "spec": {
            "selector": {"matchLabels": selector},
            "namespaceSelector": {"matchNames": [opts.namespace]},
            "endpoints": [
                {
                    "port": "api",
                    "path": "/metrics",
                    "interval": "15s",
                    "authorization": {
                        "type": "Bearer",
                        "credentials": {"name": opts.api_token_secret, "key": "token"},
                    },
                }
            ],
        },
    }
    return service, monitor


def config_digest(config_text: str, allocation_json: str) -> str:
    """First 16 hex digits of the SHA-256 of what the pods read: a changed plan rolls them."""
    h = hashlib.sha256()
    h.update(config_text.encode())
    h.update(b"\0")
    h.update(allocation_json.encode())
    return h.hexdigest()[:16]


def node_labels_of(config: ColoConfig) -> dict[str, dict[str, str]]:
    """Inventory labels per node (rows of one node merged). Raises ConfigError for an invalid label."""
    out: dict[str, dict[str, str]] = {}
    if config.gpus == "auto":
        return out
    for i, row in enumerate(config.gpus):
        check_labels(row.labels, field=f"gpus[{i}]")
        out.setdefault(row.node, {}).update(row.labels)
    return out


def render_k8s(
    config: ColoConfig,
    plan: Plan,
    *,
    config_text: str,
    source: str = "colo.yaml",
    options: K8sOptions | None = None,
) -> Rendered:
    """Render ``plan`` (complete: every agent placed) for Kubernetes.

    ``config_text`` is the colo.yaml as the user wrote it (it goes into the ConfigMap); ``source`` names it
    in the files' header. Raises ConfigError for names Kubernetes refuses (naming the agent, node or label)
    and for an agent that was not placed.
    """
    opts = options or K8sOptions()
    check_namespace(opts.namespace)
    unplaced = [a.name for a in plan.agents if a.gpu is None]
    if unplaced:
        raise ConfigError(
            f"agents {', '.join(unplaced)} fit on no GPU; there is nothing to pin them to",
            field=f"agents.{unplaced[0]}",
            hint="run `colo plan` to see why, then add GPUs or lower the margins",
        )
    nodes = sorted({g.gpu.node for g in plan.gpus})
    check_node_names(nodes)
    names = agent_object_names(a.name for a in plan.agents)
    node_labels = node_labels_of(config)
    header = HEADER.format(source=source)

    allocation_json = json.dumps(allocation_document(plan), indent=2, sort_keys=True) + "\n"
    digest = config_digest(config_text, allocation_json)
    files: dict[str, str] = {}
    notes: dict[str, list[str]] = {}

    namespace = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": opts.namespace,
            "labels": {
                "app.kubernetes.io/part-of": "colo",
                # hostIPC and hostPath volumes are only admitted at the privileged Pod Security level.
                "pod-security.kubernetes.io/enforce": "privileged",
                "pod-security.kubernetes.io/warn": "privileged",
            },
        },
    }
    files["namespace.yaml"] = dump_all([namespace], header=header)
    configmap = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(CONFIG_MAP, opts.namespace, _labels("colo-config", CONFIG_MAP)),
        "data": {"colo.yaml": config_text, "mps_allocation_config.json": allocation_json},
    }
    files["configmap.yaml"] = dump_all([configmap], header=header)
    files["node-agent-daemonset.yaml"] = dump_all(_node_agent_objects(nodes, opts, config, digest), header=header)
    service, monitor = _service_objects(opts, config)
    files["node-agent-service.yaml"] = dump_all([service], header=header)
    if opts.service_monitor:
        files["servicemonitor.yaml"] = dump_all([monitor], header=header)
    agent_files = []
    for a in sorted(plan.placed, key=lambda p: names[p.name]):
        assert a.gpu is not None
        path = f"agents/{names[a.name]}.yaml"
        objs = _agent_objects(
            a, names[a.name], config.agents[a.name], node_labels.get(a.gpu.node, {}), opts, digest, notes
        )
        files[path] = dump_all(objs, header=header)
        agent_files.append(path)
    resources = ["namespace.yaml", "configmap.yaml", "node-agent-daemonset.yaml", "node-agent-service.yaml"]
    if opts.service_monitor:
        resources.append("servicemonitor.yaml")
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "namespace": opts.namespace,
        "resources": resources + agent_files,
    }
    files["kustomization.yaml"] = "".join(f"# {line}\n" for line in header.splitlines()) + dump(kustomization)
    pinned = [n for n, s in config.agents.items() if s.gpu is not None or s.node is not None]
    explanation = explain_plan(plan, reserve_per_gpu_bytes=config.policy.reserve_per_gpu_bytes, pinned=pinned)
    note_lines = _note_lines(notes)
    files["placement.txt"] = "\n".join([f"# {header}", *explanation, *(f"note: {n}" for n in note_lines)]) + "\n"
    return Rendered(files=files, notes=tuple(note_lines))
