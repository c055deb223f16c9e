"""Spawn -> RUNNING of built-in agents under a real MPS daemon: plain spawning against the pre-imported
launcher (``policy.launcher: fork``), one bert-tiny agent alone and the nine newsroom agents at once
(examples/newsroom/colo.sized.yaml), with the launch specs and MPS client environment colo builds.

Prints, per timed run (after one untimed warm-up launch per case)::

    GPU-RESULT launcher mode=spawn|fork agent=bert-tiny agents=1 run=N spawn_to_running_s=... each: analyst=...
    GPU-RESULT launcher mode=spawn|fork agent=newsroom agents=9 run=N spawn_to_running_s=<slowest> each: ...

and a ``GPU-RESULT launcher summary ...`` line per case (median, min, max). The targets (bert-tiny <= 3 s
alone; the newsroom <= 8 s) are reported, not asserted: this test fails only when an agent does not start or
the launcher fell back to plain spawning.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from launcher_timing import NEWSROOM, ROOT, launch_specs, measure, summary
from mps_daemons import running_daemon

pytestmark = pytest.mark.gpu

RUNS_ALONE = int(os.environ.get("COLO_LAUNCHER_RUNS", "3"))
RUNS_NINE = int(os.environ.get("COLO_LAUNCHER_RUNS_NINE", "2"))


def test_launcher_spawn_vs_fork_under_mps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from colo.gpu.mps.root import MpsRoot
    from colo.gpu.nvml import NvmlBackend
    from colo.spec import load_config

    if not torch.cuda.is_available():
        pytest.skip("torch sees no CUDA GPU")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH")) if p))
    uuid = NvmlBackend().gpus()[0].uuid
    root = MpsRoot.under_state_dir(Path(tempfile.mkdtemp(prefix="cl", dir="/tmp")))  # short: socket paths
    everyone = sorted(load_config(NEWSROOM).agents)
    summaries = []
    with running_daemon(root, uuid):
        alone = launch_specs(NEWSROOM, ["analyst"], mps=(root, uuid))
        nine = launch_specs(NEWSROOM, everyone, mps=(root, uuid))
        for mode in ("spawn", "fork"):
            secs = measure(mode, alone, tmp_path / mode / "alone", RUNS_ALONE, label="GPU-RESULT")
            summaries.append(f"GPU-RESULT launcher summary agent=bert-tiny agents=1 {summary(mode, secs)}")
            secs = measure(mode, nine, tmp_path / mode / "nine", RUNS_NINE, label="GPU-RESULT", agent="newsroom")
            summaries.append(f"GPU-RESULT launcher summary agent=newsroom agents=9 {summary(mode, secs)}")
    for line in summaries:
        print(line, flush=True)
