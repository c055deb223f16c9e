"""systemd units: content, quoting, and ``systemd-analyze verify`` (skipped with the reason when absent)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from render_configs import NODE_A, mixed, write_config

from colo.plan import inventory_slots, plan, require_complete
from colo.render.node_agent import NodeAgentLayout
from colo.render.systemd import SystemdOptions, environment_line, exec_line, quote_arg, render_systemd
from colo.spec import load_config

ROOT = Path(__file__).resolve().parents[3]


def _render(path: Path, **opts: object) -> dict[str, str]:
    config = load_config(path)
    p = require_complete(plan(config, inventory_slots(config)))
    return render_systemd(config, p, options=SystemdOptions(**opts), agents=True)  # type: ignore[arg-type]


def test_quoting_follows_systemd_rules() -> None:
    assert quote_arg("plain") == "plain"
    assert quote_arg("a b") == '"a b"'
    assert quote_arg('say "hi"') == '"say \\"hi\\""'
    assert quote_arg("50%") == "50%%"
    assert quote_arg("$HOME") == "$$HOME"
    assert exec_line(["/bin/echo", "a b", "c"]) == '/bin/echo "a b" c'
    assert environment_line("K", 'x "y" 5%') == 'Environment="K=x \\"y\\" 5%%"'


def test_units_carry_the_plan(tmp_path: Path) -> None:
    files = _render(mixed(tmp_path / "colo.yaml", gpus=NODE_A))
    assert sorted(files) == [
        "colo-agent-analyst.service",
        "colo-agent-analyst.service.d/10-colo-mps.conf",
        "colo-agent-chief-editor.service",
        "colo-agent-chief-editor.service.d/10-colo-mps.conf",
        "colo-agent-custom.service",
        "colo-agent-custom.service.d/10-colo-mps.conf",
        "colo.service",
    ]
    dropin = files["colo-agent-chief-editor.service.d/10-colo-mps.conf"]
    # big = 10 GiB + 50 % = 15 GiB = 15360 MiB; gpu index 0 or 1 of node-a through the index link.
    assert 'Environment="CUDA_MPS_PINNED_DEVICE_MEM_LIMIT=0=15360M"' in dropin
    assert 'Environment="CUDA_MPS_PIPE_DIRECTORY=/var/lib/colo/mps/by-index/' in dropin
    low = files["colo-agent-analyst.service.d/10-colo-mps.conf"]
    assert 'CUDA_MPS_CLIENT_PRIORITY=1"' in low and 'CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=50"' in low
    custom = files["colo-agent-custom.service"]
    assert 'ExecStart=python3 serve.py --name "a b"' in custom
    assert "Requires=colo.service" in custom and "PartOf=colo.service" in custom


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed here")
def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    """Every unit and drop-in of a rendering verifies with no warning at all (unknown keys are warnings)."""
    cfg = mixed(tmp_path / "colo.yaml", gpus=NODE_A)
    text = cfg.read_text().replace("command: [python3, serve.py", f"command: [{sys.executable}, serve.py")
    cfg.write_text(text)
    # ExecStart= binaries must exist for verify: point colo and python at this interpreter.
    files = _render(
        cfg, colo_bin=sys.executable, python=sys.executable, layout=NodeAgentLayout(state_dir="/var/lib/colo")
    )
    out = tmp_path / "units"
    for rel, body in files.items():
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_text(body)
    units = sorted(str(p) for p in out.glob("*.service"))
    env = {**os.environ, "SYSTEMD_LOG_LEVEL": "warning"}
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *units],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr
    # The check is real: a unit systemd cannot run is refused.
    broken = out / "colo-broken.service"
    broken.write_text("[Service]\nExecStart=/nonexistent/colo up\n")
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(broken)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0 and "/nonexistent/colo" in result.stderr


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed here")
def test_golden_systemd_units_verify(tmp_path: Path) -> None:
    """The committed units of one node, with /usr/local/bin/colo and /usr/bin/python3 pointed at this
    interpreter (verify insists that ExecStart= binaries exist), verify without a warning."""
    base = ROOT / "examples" / "cluster" / "rendered" / "systemd" / "gpu-node-b"
    out = tmp_path / "gpu-node-b"
    for path in sorted(base.rglob("*")):
        if path.is_file():
            target = out / path.relative_to(base)
            target.parent.mkdir(parents=True, exist_ok=True)
            text = path.read_text().replace("/usr/local/bin/colo", sys.executable)
            target.write_text(text.replace("/usr/bin/python3", sys.executable))
    units = sorted(str(p) for p in out.glob("*.service"))
    assert len(units) == 30
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *units], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr


def test_single_host_unit_has_no_node_flag(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "colo.yaml", ["a: {models: [small]}"], gpus=NODE_A)
    config = load_config(cfg)
    p = require_complete(plan(config, inventory_slots(config)))
    files = render_systemd(config, p)
    # A built-in agent forked by colo: the node launcher's unit too, wanted by colo.service.
    assert sorted(files) == ["colo-launcher.service", "colo.service"]
    assert "ExecStart=/usr/local/bin/colo up /etc/colo/colo.yaml\n" in files["colo.service"]
    assert "StateDirectory=colo" in files["colo.service"]
    assert "Wants=network-online.target colo-launcher.service\n" in files["colo.service"]
    launcher = files["colo-launcher.service"]
    assert "ExecStart=/usr/local/bin/colo launcher serve --models-of /etc/colo/colo.yaml\n" in launcher
    assert "RuntimeDirectoryMode=0700" in launcher and "KillMode=process" in launcher
    # colo up's own environment (a variable read at process start that differs would stop the forking).
    assert 'Environment="PYTHONUNBUFFERED=1"' in launcher and 'Environment="PYTHONUNBUFFERED=1"' in files["colo.service"]


def test_no_launcher_unit_where_colo_forks_nothing(tmp_path: Path) -> None:
    spawn = write_config(tmp_path / "spawn.yaml", ["a: {models: [small]}"], gpus=NODE_A)
    spawn.write_text(spawn.read_text().replace("placement: spread}", "placement: spread, launcher: spawn}", 1))
    config = load_config(spawn)
    p = require_complete(plan(config, inventory_slots(config)))
    assert sorted(render_systemd(config, p)) == ["colo.service"]
    assert "colo-launcher" not in render_systemd(config, p)["colo.service"]
