"""scripts/tune_run.py (gpu_tune.sh's judge): each agent's peak over its tuned limit, out-of-memory signs and
507 answers, read from a real state database written here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from colo.supervise.snapshots import UsageSample
from colo.supervise.store import Store
from scriptkit import load_script

MIB = 1 << 20
CONFIG = """\
version: 1
gpus: [{name: H100, memory: 80GiB}]
models:
  tiny: {memory: 512MiB, batch_size: 8, max_seq_len: 128}
agents:
  critic: {models: [tiny], port: 18101}
  scout: {models: [tiny], port: 18102}
"""


def _state(tmp_path: Path, samples: list[UsageSample]) -> tuple[Path, Path, Path, Path]:
    config = tmp_path / "colo.yaml"
    config.write_text(CONFIG)
    sd = tmp_path / "sd"
    sd.mkdir()
    store = Store(sd / "colo.db")
    store.add_usage(samples, keep_after=0.0, max_rows=1000)
    store.close()
    tune = tmp_path / "tune.json"
    tune.write_text(json.dumps({"agents": [{"agent": "critic", "current_bytes": 1024 * MIB}], "total_before_bytes": 2 << 30, "total_after_bytes": 1 << 30}))
    load = tmp_path / "load.json"
    load.write_text(json.dumps({"agents": {"scout": {"errors": {"507": 2}}}}))
    return config, sd, tune, load


def test_report_passes_an_agent_near_its_limit_and_fails_one_far_below_or_answering_507(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tune_run = load_script("tune_run")
    samples = [
        UsageSample("critic", 100.0, 110.0, 460 * MIB, 512 * MIB, polls=10),  # 0.90 of the limit
        UsageSample("scout", 100.0, 110.0, 500 * MIB, 512 * MIB, polls=10),  # near, but 507s in the load
    ]
    config, sd, tune, load = _state(tmp_path, samples)
    assert tune_run.report(config, sd, tune, 50.0, load, False) == 1
    out = capsys.readouterr().out
    assert "GPU-RESULT tune agent=critic limit_before_mib=1024 limit_after_mib=512 peak_mib=460" in out
    assert "peak_over_limit=0.898 oom=0 http_507=0 windows=1 outcome=pass" in out
    assert "agent=scout" in out and "http_507=2" in out and "outcome=fail" in out
    assert "total_before_gib=2.00 total_after_gib=1.00 targets=fail" in out
    # Windows before --since do not count; a dry run judges nothing and exits 0.
    assert tune_run.report(config, sd, tune, 200.0, load, True) == 0
    assert "windows=0" in capsys.readouterr().out


def test_report_passes_when_every_agent_is_near_its_limit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tune_run = load_script("tune_run")
    samples = [UsageSample(a, 100.0, 110.0, 480 * MIB, 512 * MIB, polls=5) for a in ("critic", "scout")]
    config, sd, tune, _ = _state(tmp_path, samples)
    assert tune_run.main(["report", str(config), "--state-dir", str(sd), "--tune", str(tune), "--since", "0",
                          "--load", str(tmp_path / "none.json")]) == 0
    assert "targets=pass" in capsys.readouterr().out
