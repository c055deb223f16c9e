"""GPU test of ``colo bench agents``: two built-in agents (bert-tiny) started by colo, MPS then time-slicing,
loaded through HTTP (run on the device machine: ``PYTHONPATH=src python3 -m pytest -m gpu``).

Checks what issue 13's run relies on: colo starts and stops the agents per mode, every request answers 200
(or 503 with Retry-After), each agent's NVML peak is seen by pid and stays within its limit, the lone-request
latencies are measured, and nothing is left running.
"""

from __future__ import annotations

import glob
import json
import socket
from pathlib import Path

import pytest
from leftovers import processes_mentioning
from typer.testing import CliRunner

from colo.cli.main import app

pytestmark = pytest.mark.gpu


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_bench_agents_mps_and_timeslice(tmp_path: Path) -> None:
    from colo.gpu.nvml import NvmlBackend

    if not NvmlBackend().gpus():
        pytest.skip("no NVIDIA GPU")
    agents = "".join(
        f"  a{i}:\n    models: [google/bert_uncased_L-2_H-128_A-2]\n    port: {_port()}\n" for i in range(2)
    )
    config = tmp_path / "colo.yaml"
    config.write_text(
        "version: 1\ngpus: auto\npolicy: {margin: '50%, at least 512MiB'}\n"
        "models:\n  google/bert_uncased_L-2_H-128_A-2: {memory: 1GiB, batch_size: 32, max_seq_len: 512}\n"
        f"agents:\n{agents}"
    )
    out = tmp_path / "out"
    r = CliRunner().invoke(
        app,
        [
            "bench",
            "agents",
            str(config),
            "--mode",
            "mps,timeslice",
            "-n",
            "2",
            "--duration",
            "2",
            "--lone",
            "1",
            "--start-timeout",
            "240",
            "--out",
            str(out),
            "--json",
        ],
    )
    print(r.output[-4000:])
    assert r.exit_code == 0, r.output
    run = json.loads(r.stdout)["runs"][0]
    assert [(p["mode"], p["concurrency"]) for p in run["points"]] == [
        ("mps", 2),
        ("timeslice", 2),
    ]
    for p in run["points"]:
        assert p["aggregate_per_sec"] > 0 and p["load"]["cpu_cores_used"] < 1.0
        for inst in p["instances"]:
            info = inst["info"]
            assert info["hard_errors"] == 0, info
            assert info["peak_memory_bytes"], f"no NVML reading of pid {inst['pid']}"
            assert info["within_limit"] is True, info
    assert all(v["p50_secs"] for m in ("mps", "timeslice") for v in run["settings"]["lone"][m].values())
    assert (out / "agents.png").exists()
    assert not glob.glob("/tmp/colo-agents-bench-*"), "a state dir left behind (a failed colo up keeps its)"
    left = processes_mentioning("colo-agents-bench-")  # colo up, the launcher and the agents of its state dirs
    assert not left, f"processes of a bench state dir left running: {left}"
