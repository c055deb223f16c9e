"""GPU test of ``policy.mps: auto`` (issue 14, part 3): one built-in agent (roberta-base, random weights) alone on
the GPU, ``colo up`` with the default ``mps: auto``.

What is asserted is the behaviour: the plan runs the lone agent without MPS and holds its limit by capping
PyTorch's allocator (``allocator-cap``); at run time no MPS daemon or server of the state dir exists, NVML lists
the agent as a plain (not MPS) client, its log says the allocator was capped, it answers a 32 × 128 request,
and ``colo down`` leaves nothing. How fast auto runs against time-slicing and MPS is a benchmark figure::

    colo bench agents examples/one-agent/colo.yaml --mode timeslice,auto,mps -n 2 --batch 32 --seq-len 128

(docs/benchmarks.md). A failed run copies colo up's output and the agent's log to ``$COLO_GPU_OUT/mps_auto``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from leftovers import clean_state_dir, mps_processes, processes_mentioning
from newsroom import COLO

from testkit import free_port, offline_child_env, wait_for

pytestmark = pytest.mark.gpu
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "one-agent" / "colo.yaml"


def _keep_logs(sd: Path) -> None:
    out = os.environ.get("COLO_GPU_OUT")
    if not out:
        return
    dest = Path(out) / "mps_auto"
    dest.mkdir(parents=True, exist_ok=True)
    for f in [sd / "up.log", *sorted((sd / "logs").glob("*.log"))]:
        if f.is_file():
            shutil.copy(f, dest / f.name)


@pytest.fixture
def sd() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="cma", dir="/tmp"))
    try:
        yield d
    finally:
        clean_state_dir(d)


def _colo(sd: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*COLO, *args, "--state-dir", str(sd)], env=offline_child_env(), capture_output=True, text=True, timeout=timeout
    )


def test_mps_auto_runs_a_lone_agent_without_mps_under_an_allocator_cap(sd: Path) -> None:
    from colo.gpu.nvml import NvmlBackend

    if not NvmlBackend().gpus():
        pytest.skip("no NVIDIA GPU")
    port = free_port()
    config = sd / "colo.yaml"
    config.write_text(EXAMPLE.read_text().replace("port: 9131", f"port: {port}"))
    planned = subprocess.run([*COLO, "plan", str(config), "--json"], env=offline_child_env(), capture_output=True, text=True, timeout=60)
    assert planned.returncode == 0, planned.stderr
    doc = json.loads(planned.stdout)
    gpu0 = doc["colo"]["gpus"][0]
    assert gpu0["mps"] is False and "MPS off (auto)" in gpu0["mps_reason"], gpu0
    assert doc["mps_resource_allocation"]["agent_allocations"]["reader"]["colo"]["memory_enforcement"] == "allocator-cap"
    t0 = time.monotonic()
    with open(sd / "up.log", "ab") as log:
        proc = subprocess.Popen([*COLO, "up", str(config), "--state-dir", str(sd), "--no-api"], env=offline_child_env(),
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    ok = False
    try:
        def running() -> dict[str, object] | None:
            if proc.poll() is not None:
                raise AssertionError(f"colo up exited with {proc.returncode}: {(sd / 'up.log').read_text()[-3000:]}")
            out = _colo(sd, "status", "--json", timeout=30)
            if out.returncode != 0:
                return None
            agents = {a["name"]: a for a in json.loads(out.stdout)["agents"]}
            reader = agents.get("reader")
            return reader if reader and reader["state"] == "RUNNING" else None

        reader = wait_for(running, timeout=240, step=0.5)
        assert reader, f"reader not RUNNING after 240 s: {_colo(sd, 'status').stdout}"
        up_s = time.monotonic() - t0
        mps = mps_processes(sd)
        row = next((p for p in NvmlBackend().processes() if p.pid == reader["pid"]), None)
        body = json.dumps({"input_ids": [[1000 + (r + t) % 1000 for t in range(128)] for r in range(32)]}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{port}/infer", data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            status = int(r.status)
        log_text = (sd / "logs" / "reader.log").read_text(errors="replace")
        capped = "allocator capped at" in log_text
        print(
            f"GPU-RESULT mps-auto up_s={up_s:.1f} mps_processes={mps or 'none'} nvml_row={'yes' if row else 'no'} "
            f"mps_client={row.is_mps_client if row else None} allocator_capped={capped} infer_32x128={status}",
            flush=True,
        )
        assert not mps, f"mps: auto started MPS for a lone agent: {mps}"
        assert row is not None and not row.is_mps_client, row
        assert capped, log_text[-3000:]
        assert status == 200
        down = _colo(sd, "down", "--timeout", "60", timeout=90)
        assert down.returncode == 0, down.stderr
        assert wait_for(lambda: proc.poll() is not None, timeout=30, step=0.2)
        assert wait_for(lambda: not processes_mentioning(str(sd)), timeout=10, step=0.2), processes_mentioning(str(sd))
        ok = True
    finally:
        if not ok:
            _keep_logs(sd)
        if proc.poll() is None:
            with contextlib.suppress(OSError):
                os.killpg(proc.pid, 9)
            proc.wait(10)
