"""``colo bench`` on a real GPU: what the benchmark does, not how fast the GPU is (the figures are
``scripts/gpu_bench.sh``'s, in docs/benchmarks.md).

- ``colo bench encoder`` through the CLI (bert-tiny fp16 8 × 128, CUDA graphs), N = 2, time-slicing and MPS
  with per-instance thread shares, plus the merged-batch bound: every instance served, NVML sampled, the MPS
  environment reached the instances, the three reports written;
- decode with a static KV cache and a CUDA-graph step: colo's own Llama decoder (the ``tiny`` shape) and
  distilgpt2 through transformers' StaticCache.

Every MPS daemon is colo's own, in a private pipe dir under /tmp, quit after each point (also on failure); the
tests check that nothing of it is left behind.
"""

from __future__ import annotations

import glob
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from colo.bench.report import load_json, to_json
from colo.bench.run import BenchPlan, run_bench
from colo.bench.spec import InstanceSpec

pytestmark = pytest.mark.gpu
BERT_TINY = "google/bert_uncased_L-2_H-128_A-2"


@pytest.fixture(scope="module")
def backend() -> Any:
    from colo.gpu.nvml import NvmlBackend

    b = NvmlBackend()
    if not b.gpus():
        pytest.skip("no NVIDIA GPU")
    return b


def _no_leftovers() -> None:
    left = glob.glob("/tmp/colo-bench-*")
    assert not left, f"private MPS directories left behind: {left}"
    ps = subprocess.run(["pgrep", "-f", "colo.bench.instance"], capture_output=True, text=True, check=False)
    assert not ps.stdout.strip(), f"instance processes left behind: {ps.stdout}"


def test_cli_bench_encoder_timeslice_mps_and_bound(backend: Any, tmp_path: Path) -> None:
    out = tmp_path / "out"
    cmd = [sys.executable, "-c", "from colo.cli.entry import main; main()", "bench", "encoder", "--model", BERT_TINY]
    cmd += ["--mode", "timeslice,mps", "--concurrency", "2", "--duration", "3"]  # 8 × 128, fp16, graphs: the defaults
    cmd += ["--out", str(out), "--json", "--thread-pct", "50,100"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=280, check=False)
    print(done.stdout[-2000:], done.stderr[-3000:])
    assert done.returncode == 0
    (result,) = load_json(done.stdout)
    for mode in ("timeslice", "mps"):
        point = result.point(mode, 2)
        assert point is not None and point.concurrency == 2
        # (--json keeps each instance's items and latency summary, not its latency lists: requests reads 0)
        assert all(i.items > 0 and i.elapsed_secs > 0 for i in point.instances), (mode, point.instances)
        assert all(i.info.get("cuda_graphs") is True for i in point.instances), point.instances[0].info
        assert point.gpu is not None and point.gpu.samples, "no NVML samples during the window"
    assert result.bound(2) is not None and result.bound(2) > 0
    assert result.mps_ratio(2) is not None
    mps2 = result.point("mps", 2)
    assert mps2 is not None
    shares = [i.info["env"].get("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE") for i in mps2.instances]
    assert shares == ["50", "100"], shares
    assert all(i.info["env"]["CUDA_MPS_PIPE_DIRECTORY"].startswith("/tmp/colo-bench-") for i in mps2.instances)
    assert {p.name for p in out.iterdir()} >= {"bench.json", "bench.md", "bench.png"}
    assert (out / "bench.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((out / "bench.json").read_text())["runs"][0]["machine"]["gpu"]
    _no_leftovers()


@pytest.mark.parametrize(
    ("kind", "params"),
    [("decode", {"shape": "tiny", "batch_size": 1}), ("hf_decode", {"model": "distilgpt2"})],
    ids=["llama-tiny-shape", "distilgpt2-static-cache"],
)
def test_decode_with_a_graph_captured_step(backend: Any, kind: str, params: dict[str, Any]) -> None:
    spec = InstanceSpec(kind, params, duration_secs=1.0)
    plan = BenchPlan(f"decode {kind}", base=spec, modes=("timeslice",), concurrencies=(1,), merged_bound=False)
    result = run_bench(plan, backend=backend, progress=print)
    point = result.point("timeslice", 1)
    assert point is not None and point.aggregate_per_sec > 0
    info = point.instances[0].info
    print(f"GPU-RESULT bench {kind} tok_s={point.aggregate_per_sec:.1f} cuda_graphs={info.get('cuda_graphs')}")
    if kind == "decode":  # colo's own decoder always captures its step
        assert info["cuda_graphs"] is True, info
    _no_leftovers()


def test_to_json_is_strict_json() -> None:
    """Reports of an empty run list are valid JSON (no NaN)."""
    json.loads(to_json([]), parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
