"""On a real GPU: ``colo profile`` of a command agent sees its process's real NVML memory.

The agent is the fake llama-server (tests/fakes) run after allocating 1 GiB with torch on the GPU, so NVML
lists the process with ~1 GiB + its CUDA context. One line::

    GPU-RESULT profile_command nvml_peak_mib=... samples=... sample_hz=...
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from colo.cli.main import app
from testkit import FAKE_LLAMA_SERVER as FAKE
from testkit import free_port

pytestmark = pytest.mark.gpu
MIB = 1024**2


def test_profile_command_agent_records_its_real_nvml_peak(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    port = free_port()
    code = (
        "import sys, torch; x = torch.empty(1 << 30, dtype=torch.uint8, device='cuda'); x.fill_(1); "
        f"sys.argv = ['llama-server', '--port', '{port}', '--load-secs', '0']; "
        f"exec(compile(open({str(FAKE)!r}).read(), 'fake', 'exec'))"
    )
    doc = {
        "version": 1,
        "state_dir": str(tmp_path / "state"),
        "models": {"m": {"path": "m.gguf", "task": "generator", "memory": "2GiB"}},
        "agents": {
            "srv": {
                "models": ["m"],
                "command": [sys.executable, "-c", code],
                "port": port,
                "health": {"type": "http", "url": f"http://127.0.0.1:{port}/health", "startup_timeout_secs": 120},
                "profile": {"body": {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}},
            }
        },
    }
    config = tmp_path / "colo.yaml"
    config.write_text(json.dumps(doc))
    db = tmp_path / "db.json"
    res = CliRunner().invoke(app, ["profile", str(config), "--db", str(db), "--json"])
    assert res.exit_code == 0, res.output
    row = json.loads(res.stdout[res.stdout.index("{") :])["results"][0]
    peak = row["nvml_peak_bytes"]
    print(
        f"GPU-RESULT profile_command nvml_peak_mib={peak / MIB:.0f} samples={row['samples']} sample_hz={row['sample_hz']}"
    )
    assert 1024 * MIB < peak < 4096 * MIB
    saved = json.loads(db.read_text())["agents"][0]
    assert saved["agent"] == "srv" and saved["provenance"]["gpu"] and saved["command"]
