"""Golden tests: rendering examples/cluster must give exactly the files committed under
examples/cluster/rendered/ (Kubernetes with a ServiceMonitor; systemd with per-agent units).

After an intended change, regenerate with ``COLO_UPDATE_GOLDEN=1 pytest tests/unit/render`` and review the
diff like code.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from colo.cli.main import app

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = ROOT / "examples" / "cluster" / "colo.yaml"
GOLDEN = ROOT / "examples" / "cluster" / "rendered"

COMMANDS = {
    "k8s": ["render", "k8s", str(EXAMPLE), "--service-monitor"],
    "systemd": ["render", "systemd", str(EXAMPLE), "--agents"],
}


def _tree(base: Path) -> dict[str, str]:
    return {p.relative_to(base).as_posix(): p.read_text() for p in sorted(base.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("kind", sorted(COMMANDS))
def test_rendered_example_matches_golden(kind: str, tmp_path: Path) -> None:
    out = tmp_path / kind
    result = CliRunner().invoke(app, [*COMMANDS[kind], "--out", str(out)])
    assert result.exit_code == 0, result.output
    got = _tree(out)
    golden_dir = GOLDEN / kind
    if os.environ.get("COLO_UPDATE_GOLDEN") == "1":
        shutil.rmtree(golden_dir, ignore_errors=True)
        shutil.copytree(out, golden_dir)
    want = _tree(golden_dir)
    assert sorted(got) == sorted(want), "rendered file set differs from the golden files"
    for rel in sorted(want):
        assert got[rel] == want[rel], f"{kind}/{rel} differs from the golden file"


def test_golden_example_has_every_agent() -> None:
    from colo.spec import load_config

    config = load_config(EXAMPLE)
    deployments = {p.stem for p in (GOLDEN / "k8s" / "agents").glob("*.yaml")}
    assert len(config.agents) == 90 == len(deployments)
    assert "chief-editor-r0" in deployments and "fact-checker-r9" in deployments
    units = [p for p in (GOLDEN / "systemd").rglob("colo-agent-*.service")]
    assert len(units) == 90
    assert sorted(p.name for p in (GOLDEN / "systemd").iterdir()) == ["gpu-node-a", "gpu-node-b", "gpu-node-c"]
