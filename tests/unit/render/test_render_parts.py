"""The pure parts: placement explanation, device-plugin verdicts, index links, k8s agent objects."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from render_configs import NODE_A, mixed, uniform, write_config

from colo import units
from colo.errors import ConfigError, PlanError
from colo.plan import inventory_slots, plan, require_complete
from colo.plan.explain import explain_plan
from colo.plan.types import GpuSlot
from colo.render.device_plugin import node_verdict, render_device_plugin
from colo.render.k8s import K8sOptions, config_digest, render_k8s
from colo.render.node_agent import NodeAgentLayout, index_links, write_index_links
from colo.spec import load_config


def _plan(path: Path) -> tuple[Any, Any]:
    config = load_config(path)
    return config, plan(config, inventory_slots(config))


def test_explain_replays_binpack(tmp_path: Path) -> None:
    cfg = write_config(
        tmp_path / "colo.yaml",
        ["a: {models: [big], priority: low}", "b: {models: [small], priority: high}", "c: {models: [small]}"],
        gpus=NODE_A,
    )
    cfg.write_text(cfg.read_text().replace("placement: spread", "placement: binpack"))
    _, p = _plan(cfg)
    lines = explain_plan(p)
    assert lines[0].startswith("placement: binpack") and "least free room" in lines[0]
    # Priority first (b high, c medium, a low), whatever the limits.
    assert [line.split(". ", 1)[1].split(" ")[0] for line in lines[1:4]] == ["b", "c", "a"]
    assert "b (high, limit 1.5 GiB) -> node-a/gpu0: 2 of 2 GPUs had room; free there 80.0 GiB -> 78.5 GiB" in lines[1]
    assert "free there 78.5 GiB -> 77.0 GiB" in lines[2]  # best fit: the fuller GPU
    assert lines[-1] == "node node-a: 3 agents on 1 of 2 GPUs, 18.0 GiB of 160.0 GiB allocated"


def test_explain_names_unplaced_and_pins(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "colo.yaml", ["huge: {models: [big]}", "p: {models: [small], gpu: 1}"], gpus=NODE_A)
    cfg.write_text(cfg.read_text().replace("big: {memory: 10GiB}", "big: {memory: 70GiB}"))
    _, p = _plan(cfg)
    lines = explain_plan(p, pinned=["p"], reserve_per_gpu_bytes=20 * units.GIB)
    assert any("huge (medium, limit 105.0 GiB): NOT PLACED" in line for line in lines)
    assert any(line.startswith("  2. p ") and "pinned" in line and "60.0 GiB -> 58.5 GiB" in line for line in lines)


def test_device_plugin_replicas_and_notes(tmp_path: Path) -> None:
    config, p = _plan(uniform(tmp_path / "colo.yaml"))
    result = render_device_plugin(config, p)
    assert [v.node for v in result.verdicts] == ["node-a", "node-b"]
    v = result.verdicts[0]
    assert v.eligible and v.replicas == 80 * 1024 // 1536 == 53
    assert "53 replicas per GPU: 1.5 GiB each (plan: 1.5 GiB)" in v.notes[0]
    assert "caps each client at 1% of the SMs (plan: 100%)" in v.notes[1]
    assert result.yaml is not None and yaml.safe_load(result.yaml.split("---\n", 1)[1])["kind"] == "ConfigMap"


def test_device_plugin_reasons(tmp_path: Path) -> None:
    config, p = _plan(mixed(tmp_path / "colo.yaml", gpus=NODE_A))
    v = node_verdict("node-a", list(p.placed), config)
    assert not v.eligible
    assert v.reasons[0].startswith("unequal limits: 1.5 GiB (analyst, custom); 15.0 GiB (chief_editor)")
    assert v.reasons[1].startswith("mixed priorities:")
    with pytest.raises(PlanError, match="node node-a: unequal limits"):
        render_device_plugin(config, p)
    pinned = write_config(tmp_path / "p.yaml", ["a: {models: [small], gpu: 0}", "b: {models: [small]}"], gpus=NODE_A)
    config, p = _plan(pinned)
    assert (
        "pinned to GPUs (the plugin hands out any replica): a" in node_verdict("node-a", list(p.placed), config).reasons
    )


def test_index_links(tmp_path: Path) -> None:
    assert index_links([(1, "GPU-b"), (0, "GPU-a")]) == {"0": "../GPU-a", "1": "../GPU-b"}
    root = tmp_path / "mps"
    written = write_index_links(root, [(0, "GPU-a"), (1, "GPU-b")])
    assert [p.name for p in written] == ["0", "1"]
    assert os.readlink(root / "by-index" / "0") == "../GPU-a"
    (root / "GPU-a" / "pipe").mkdir(parents=True)
    assert (root / "by-index" / "0" / "pipe").is_dir()  # the link leads to the daemon's pipe dir
    assert write_index_links(root, [(0, "GPU-a"), (1, "GPU-b")]) == []  # unchanged: nothing written
    assert [p.name for p in write_index_links(root, [(0, "GPU-c")])] == ["0"]  # re-enumerated
    assert os.readlink(root / "by-index" / "0") == "../GPU-c"


def test_pipe_dirs_by_uuid_index_and_length() -> None:
    layout = NodeAgentLayout()
    assert layout.mps_root == "/var/lib/colo/mps"
    assert layout.pipe_dir(GpuSlot("n", 3, "H100", units.GIB)) == "/var/lib/colo/mps/by-index/3/pipe"
    slot = GpuSlot("n", 3, "H100", units.GIB, uuid="GPU-0f1e2d3c-aaaa-bbbb-cccc-0123456789ab")
    assert layout.pipe_dir(slot) == f"/var/lib/colo/mps/{slot.uuid}/pipe"
    with pytest.raises(ConfigError, match="longer than"):
        NodeAgentLayout(state_dir="/" + "x" * 80).pipe_dir(slot)


def _objs(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


def test_agent_objects_by_health_type(tmp_path: Path) -> None:
    config, p = _plan(mixed(tmp_path / "colo.yaml"))
    files = render_k8s(config, p, config_text="x", options=K8sOptions(runtime_class=None)).files
    (custom,) = _objs(files["agents/custom.yaml"])  # no port: no Service
    pod = custom["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["command"] == ["python3", "serve.py", "--name", "a b"]
    assert c["livenessProbe"]["tcpSocket"] == {"port": 9000}
    assert "runtimeClassName" not in pod
    assert not any(v["name"] == "config" for v in pod["volumes"])  # own command: no colo.yaml mounted
    deployment, service = _objs(files["agents/chief-editor.yaml"])
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert deployment["metadata"]["annotations"]["colo.dev/agent-name"] == "chief_editor"
    env = {e["name"]: e["value"] for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    gpu = p.agent("chief_editor").gpu
    assert env["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"] == "0=15360M"
    assert env["NVIDIA_VISIBLE_DEVICES"] == str(gpu.index)
    assert env["CUDA_MPS_PIPE_DIRECTORY"] == f"/var/lib/colo/mps/by-index/{gpu.index}/pipe"
    terms = deployment["spec"]["template"]["spec"]["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]["nodeSelectorTerms"]
    assert terms == [{"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": [gpu.node]}]}]
    assert service["spec"]["ports"][0]["port"] == 8000
    probe = deployment["spec"]["template"]["spec"]["containers"][0]["startupProbe"]
    assert probe["httpGet"]["path"] == "/health" and probe["failureThreshold"] == 60


def test_config_changes_roll_the_pods(tmp_path: Path) -> None:
    assert config_digest("a", "b") != config_digest("a", "c")
    config, p = _plan(uniform(tmp_path / "colo.yaml"))
    one = render_k8s(config, p, config_text="x").files["agents/worker-0.yaml"]
    two = render_k8s(config, p, config_text="y").files["agents/worker-0.yaml"]
    assert one != two and config_digest("x", "") not in one


def test_unplaced_agent_cannot_be_rendered(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "colo.yaml", ["huge: {models: [big]}"], gpus=NODE_A)
    cfg.write_text(cfg.read_text().replace("big: {memory: 10GiB}", "big: {memory: 79GiB}"))
    config, p = _plan(cfg)
    with pytest.raises(ConfigError, match="huge fit on no GPU"):
        render_k8s(config, p, config_text="")
    with pytest.raises(PlanError):
        require_complete(p)
