"""``colo render ...`` through the CLI: files written, stale files pruned, bad inputs give clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from render_configs import NODE_A, mixed, uniform, write_config
from typer.testing import CliRunner

from colo.cli.main import app

runner = CliRunner()


def _run(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output + (result.stderr if result.stderr_bytes is not None else "")


def test_k8s_writes_kustomization_and_prunes_removed_agents(tmp_path: Path) -> None:
    mixed_config = mixed(tmp_path / "a" / "colo.yaml")
    out = tmp_path / "k8s"
    code, text = _run("render", "k8s", str(mixed_config), "--out", str(out), "--namespace", "newsroom")
    assert code == 0, text
    assert "kubectl apply -k" in text and "placement: spread" in text
    kust = yaml.safe_load((out / "kustomization.yaml").read_text())
    assert kust["namespace"] == "newsroom"
    assert "agents/chief-editor.yaml" in kust["resources"]
    for rel in kust["resources"]:
        assert (out / rel).is_file()
    (out / "agents" / "mine.yaml").write_text("# a file the user put here\n")
    smaller = write_config(tmp_path / "b" / "colo.yaml", ["analyst: {models: [small], port: 8000}"])
    code, text = _run("render", "k8s", str(smaller), "--out", str(out))
    assert code == 0, text
    assert sorted(p.name for p in (out / "agents").iterdir()) == ["analyst.yaml", "mine.yaml"]


def test_k8s_json_lists_files(tmp_path: Path) -> None:
    mixed_config = mixed(tmp_path / "colo.yaml")
    code, text = _run("render", "k8s", str(mixed_config), "--out", str(tmp_path / "o"), "--json")
    assert code == 0, text
    doc = json.loads(text)
    assert "agents/custom.yaml" in doc["files"] and doc["placement"][0].startswith("placement:")


def test_agent_pinned_to_unknown_node_is_a_config_error(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "colo.yaml", ["analyst: {models: [small], node: node-z}"])
    code, text = _run("render", "k8s", str(cfg), "--out", str(tmp_path / "o"))
    assert code == 2
    assert "agents.analyst.node" in text and "node-z" in text and "node-a, node-b" in text
    assert not (tmp_path / "o").exists()


def test_agent_that_fits_nowhere_is_named(tmp_path: Path) -> None:
    cfg_path = write_config(tmp_path / "colo.yaml", ["huge: {models: [big, small]}", "ok: {models: [small]}"])
    cfg_path.write_text(cfg_path.read_text().replace("big: {memory: 10GiB}", "big: {memory: 79GiB}"))
    for kind in ("k8s", "systemd"):
        code, text = _run("render", kind, str(cfg_path), "--out", str(tmp_path / kind))
        assert code == 1, text
        assert "huge needs" in text and "fit on no GPU" in text
        assert not (tmp_path / kind).exists()


def test_names_kubernetes_refuses_are_named(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "colo.yaml", ["chief_editor: {models: [small]}", "chief-editor: {models: [small]}"])
    code, text = _run("render", "k8s", str(cfg), "--out", str(tmp_path / "o"))
    assert code == 2
    assert "'chief-editor' and 'chief_editor' both become the Kubernetes name 'chief-editor'" in text
    bad_node = tmp_path / "bad.yaml"
    bad_node.write_text(cfg.read_text().replace("node-a", "Node_A").replace("chief-editor: {", "x: {"))
    code, text = _run("render", "k8s", str(bad_node), "--out", str(tmp_path / "o"))
    assert code == 2 and "'Node_A' is not a Kubernetes node name" in text
    code, text = _run("render", "k8s", str(cfg), "--out", str(tmp_path / "o"), "--namespace", "Bad_NS")
    assert code == 2 and "Bad_NS" in text


def test_device_plugin_config_for_uniform_agents(tmp_path: Path) -> None:
    uniform_config = uniform(tmp_path / "colo.yaml")
    code, text = _run("render", "nvidia-device-plugin", str(uniform_config), "--out", str(tmp_path / "dp.yaml"))
    assert code == 0, text
    assert "node node-a: the device plugin can run its 4 agents (colo-mps-x53)" in text
    cm = yaml.safe_load((tmp_path / "dp.yaml").read_text())
    assert cm["kind"] == "ConfigMap" and cm["metadata"]["namespace"] == "nvidia-device-plugin"
    assert sorted(cm["data"]) == ["colo-mps-x53"]
    conf = yaml.safe_load(cm["data"]["colo-mps-x53"])
    # The format of NVIDIA k8s-device-plugin's README ("With CUDA MPS").
    assert conf == {
        "version": "v1",
        "flags": {"migStrategy": "none"},
        "sharing": {"mps": {"resources": [{"name": "nvidia.com/gpu", "replicas": 53}]}},
    }
    header = (tmp_path / "dp.yaml").read_text()
    assert "kubectl label node node-a --overwrite nvidia.com/device-plugin.config=colo-mps-x53" in header


def test_device_plugin_refuses_what_it_cannot_express(tmp_path: Path) -> None:
    mixed_config = mixed(tmp_path / "colo.yaml", gpus=NODE_A)
    code, text = _run("render", "nvidia-device-plugin", str(mixed_config))
    assert code == 1
    assert "cannot express this plan" in text and "unequal limits" in text and "colo render k8s" in text


def test_device_plugin_stdout_and_partial(tmp_path: Path) -> None:
    cfg = write_config(
        tmp_path / "colo.yaml",
        [
            "w0: {models: [small], node: node-a}",
            "w1: {models: [small], node: node-a}",
            "b0: {models: [big], node: node-b}",
            "b1: {models: [small], node: node-b, priority: low}",
        ],
    )
    result = runner.invoke(app, ["render", "nvidia-device-plugin", str(cfg)])
    assert result.exit_code == 0, result.output
    cm = yaml.safe_load(result.stdout)
    assert list(cm["data"]) == ["colo-mps-x53"]
    assert "node node-b: needs colo's own mode" in result.stderr
    assert "mixed priorities" in result.stderr


def test_systemd_single_node_layout(tmp_path: Path) -> None:
    cfg = write_config(
        tmp_path / "colo.yaml",
        ["chief_editor: {models: [small], restart: {policy: never, stop_signal: INT}}"],
        gpus=NODE_A,
    )
    out = tmp_path / "units"
    code, text = _run("render", "systemd", str(cfg), "--out", str(out), "--agents")
    assert code == 0, text
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        "colo-agent-chief-editor.service",
        "colo-agent-chief-editor.service.d/10-colo-mps.conf",
        "colo.service",
    ]
    unit = (out / "colo-agent-chief-editor.service").read_text()
    assert "Restart=no" in unit and "KillSignal=SIGINT" in unit
    assert "--agent chief_editor" in unit
    node = (out / "colo.service").read_text()
    assert "ExecStart=/usr/local/bin/colo node /etc/colo/colo.yaml --node node-a --no-agents" in node
    code, text = _run("render", "systemd", str(cfg), "--out", str(out), "--colo-bin", "colo")
    assert code == 2 and "absolute path" in text


def test_explain_command(tmp_path: Path) -> None:
    code, text = _run("render", "explain", str(mixed(tmp_path / "colo.yaml")))
    assert code == 0, text
    assert "placement: spread" in text and "chief_editor (high, limit 15.0 GiB) -> node-a/gpu0" in text


def test_device_plugin_json(tmp_path: Path) -> None:
    result = runner.invoke(app, ["render", "nvidia-device-plugin", str(uniform(tmp_path / "colo.yaml")), "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert [v["eligible"] for v in doc["verdicts"]] == [True, True]
    assert doc["verdicts"][0]["replicas"] == 53 and "colo-mps-x53" in doc["yaml"]
