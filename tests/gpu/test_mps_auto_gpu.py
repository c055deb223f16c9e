"""GPU test of ``policy.mps: auto`` (issue 14, part 3): one built-in agent (roberta-base, random weights) on
one GPU, run by ``colo bench agents`` three ways — plain time-slicing (``colo up --no-mps``), ``mps: auto``
(``--mps auto``: the plan runs this lone agent without MPS) and MPS (``--mps on``) — loaded through HTTP.

Target: with ``mps: auto`` a single agent runs within 2 % of plain time-slicing. Prints one
``GPU-RESULT mps-auto mode=... clients=... seq_per_s=... over_timeslice=...`` line per point and a summary
``GPU-RESULT mps-auto summary auto_over_timeslice=... within_2pct=yes|no mps_over_timeslice=...``.
Asserts the plan's decision, no errors, and auto within 5 % (the 2 % verdict is printed: one short window
per mode is noisy). Run on the device machine: ``python -m pytest -m gpu tests/gpu/test_mps_auto_gpu.py -s``.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from typer.testing import CliRunner

from colo.cli.main import app

pytestmark = pytest.mark.gpu
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "one-agent" / "colo.yaml"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_mps_auto_lone_agent_runs_like_time_slicing(tmp_path: Path) -> None:
    from colo.gpu.nvml import NvmlBackend

    if not NvmlBackend().gpus():
        pytest.skip("no NVIDIA GPU")
    config = tmp_path / "colo.yaml"
    config.write_text(EXAMPLE.read_text().replace("port: 9131", f"port: {_port()}"))
    runner = CliRunner()
    planned = runner.invoke(app, ["plan", str(config), "--json"])
    assert planned.exit_code == 0, planned.output
    doc = json.loads(planned.stdout)
    gpu0 = doc["colo"]["gpus"][0]
    assert gpu0["mps"] is False and "MPS off (auto)" in gpu0["mps_reason"]
    assert doc["mps_resource_allocation"]["agent_allocations"]["reader"]["colo"]["memory_enforcement"] == "allocator-cap"
    r = runner.invoke(
        app,
        [
            "bench", "agents", str(config), "--mode", "timeslice,auto,mps", "-n", "2", "--batch", "32",
            "--seq-len", "128", "--duration", "8", "--warmup", "2", "--start-timeout", "240",
            "--out", str(tmp_path / "out"), "--json",
        ],
    )
    print(r.output[-3000:])
    if r.exit_code != 0:
        _keep_logs(r.output)
    assert r.exit_code == 0, r.output
    run = json.loads(r.stdout)["runs"][0]
    by_mode = {s["mode"]: s for s in run["summary"]}
    assert set(by_mode) == {"timeslice", "auto", "mps"}
    for s in run["summary"]:
        print(
            f"GPU-RESULT mps-auto mode={s['mode']} clients={s['concurrency']} seq_per_s={s['aggregate_per_sec']:.1f} "
            f"p99_ms={1000 * (s['latency_p99_secs'] or 0.0):.2f} over_timeslice={s['over_timeslice']:.3f}"
        )
    for p in run["points"]:
        for inst in p["instances"]:
            assert inst["info"]["hard_errors"] == 0, inst["info"]
    auto = by_mode["auto"]["over_timeslice"]
    mps = by_mode["mps"]["over_timeslice"]
    print(
        f"GPU-RESULT mps-auto summary auto_over_timeslice={auto:.3f} within_2pct={'yes' if abs(auto - 1) <= 0.02 else 'no'}"
        f" mps_over_timeslice={mps:.3f}"
    )
    assert abs(auto - 1.0) <= 0.05


def _keep_logs(output: str) -> None:
    """A failed run: copy the state dir the bench kept (colo up's output, the agent's and the launcher's logs)
    to ``$COLO_GPU_OUT/mps_auto_logs`` so the failure comes back from the device with its reasons."""
    import os
    import re
    import shutil

    out = os.environ.get("COLO_GPU_OUT")
    if not out:
        return
    for kept in re.findall(r"state dir \(logs\) kept: (\S+)", output):
        sd = Path(kept)
        dest = Path(out) / "mps_auto_logs" / sd.name
        dest.mkdir(parents=True, exist_ok=True)
        for f in [sd / "up.log", *sorted((sd / "logs").glob("*.log"))]:
            if f.is_file():
                shutil.copy(f, dest / f.name)
