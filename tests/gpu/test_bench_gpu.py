"""GPU smoke tests of ``colo bench`` (run on the device machine: ``PYTHONPATH=src python3 -m pytest -m gpu``).

Each test runs real instance processes on GPU 0, short windows, and prints what it measured. Every MPS
daemon is colo's own, in a private pipe dir under /tmp, quit after each point (also on failure); the tests
check that nothing of it is left behind.
"""

from __future__ import annotations

import glob
import json
import subprocess
import sys
from pathlib import Path

import pytest

from colo.bench.report import to_json, to_markdown, write_reports
from colo.bench.run import BenchPlan, run_bench
from colo.bench.spec import InstanceSpec

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def backend():  # type: ignore[no-untyped-def]
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


def test_encoder_tiny_timeslice_and_mps(backend, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """bert-tiny fp16 8×128 with CUDA graphs, N = 1, 2 in both modes + merged bound; reports written."""
    spec = InstanceSpec(
        "encoder",
        {"model": "google/bert_uncased_L-2_H-128_A-2", "batch_size": 8, "seq_len": 128, "dtype": "float16"},
        duration_secs=2.0,
    )
    plan = BenchPlan("smoke encoder", base=spec, concurrencies=(1, 2), ready_timeout_secs=300)
    result = run_bench(plan, backend=backend, progress=print)
    print(to_markdown([result]))
    for mode in ("timeslice", "mps"):
        for n in (1, 2):
            point = result.point(mode, n)
            assert point is not None and point.concurrency == n
            assert all(i.items > 0 and i.requests > 0 for i in point.instances)
            assert all(i.info.get("cuda_graphs") is True for i in point.instances), point.instances[0].info
            assert point.gpu is not None and point.gpu.samples, "no NVML samples during the window"
            pids = {i.pid for i in point.instances}
            seen = set(point.gpu.process_memory_max_bytes())
            print(mode, n, "pids", pids, "seen by NVML", seen)
    assert result.bound(2) is not None and result.bound(2) > 0
    assert result.mps_ratio(2) is not None
    paths = write_reports([result], tmp_path)
    assert paths["png"].read_bytes()[:4] == b"\x89PNG"
    assert json.loads(paths["json"].read_text())["runs"][0]["machine"]["gpu"]
    _no_leftovers()


def test_llama8b_decode_single_stream_is_fast(backend) -> None:  # type: ignore[no-untyped-def]
    """The Llama-3.1-8B-shaped bf16 decoder, one stream: CUDA graph used, >= 50 % of the bandwidth bound."""
    spec = InstanceSpec("decode", {"shape": "llama-3.1-8b", "batch_size": 1}, duration_secs=3.0)
    plan = BenchPlan("smoke decode", base=spec, modes=("timeslice",), concurrencies=(1,), merged_bound=False)
    result = run_bench(plan, backend=backend, progress=print)
    point = result.point("timeslice", 1)
    assert point is not None
    info = point.instances[0].info
    tok_s = point.aggregate_per_sec
    bound = info["bandwidth_bound_steps_per_sec"]
    print(
        f"decode 8B bf16: {tok_s:.1f} tok/s; copy bandwidth {info['copy_bandwidth_bytes_per_sec'] / 1e12:.2f} TB/s;"
        f" bound {bound:.1f} tok/s; {100 * tok_s / bound:.0f} % of bound; graphs {info['cuda_graphs']}"
    )
    assert info["cuda_graphs"] is True
    assert tok_s >= 0.5 * bound, f"{tok_s:.1f} tok/s is below half the bandwidth bound {bound:.1f}"
    _no_leftovers()


def test_distilgpt2_static_cache_decode(backend) -> None:  # type: ignore[no-untyped-def]
    """distilgpt2 with transformers' StaticCache: decodes; prints tok/s and whether the graph captured."""
    spec = InstanceSpec("hf_decode", {"model": "distilgpt2"}, duration_secs=2.0)
    plan = BenchPlan("smoke hf decode", base=spec, modes=("timeslice",), concurrencies=(1,), merged_bound=False)
    result = run_bench(plan, backend=backend, progress=print)
    point = result.point("timeslice", 1)
    assert point is not None and point.aggregate_per_sec > 0
    print(f"distilgpt2: {point.aggregate_per_sec:.1f} tok/s, cuda_graphs={point.instances[0].info['cuda_graphs']}")
    _no_leftovers()


def test_cli_bench_encoder_json(tmp_path: Path) -> None:
    """`colo bench encoder` through the CLI module (as a user runs it, with per-instance MPS thread shares)
    writes its three reports."""
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-c",
        "from colo.cli.main import main; main()",
        "bench",
        "encoder",
        "--model",
        "google/bert_uncased_L-2_H-128_A-2",
        "--mode",
        "timeslice,mps",
        "--concurrency",
        "1,2",
        "--duration",
        "1",
        "--out",
        str(out),
        "--json",
        "--thread-pct",
        "50,100",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=280, check=False)
    print(done.stdout[-3000:], done.stderr[-3000:])
    assert done.returncode == 0
    assert {p.name for p in out.iterdir()} >= {"bench.json", "bench.md", "bench.png"}
    run = json.loads(done.stdout)["runs"][0]
    assert {(row["mode"], row["concurrency"]) for row in run["summary"]} >= {("timeslice", 2), ("mps", 2)}
    mps2 = next(p for p in run["points"] if p["mode"] == "mps" and p["concurrency"] == 2)
    shares = [i["info"]["env"].get("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE") for i in mps2["instances"]]
    assert shares == ["50", "100"], shares
    assert all(i["info"]["env"]["CUDA_MPS_PIPE_DIRECTORY"].startswith("/tmp/colo-bench-") for i in mps2["instances"])
    _no_leftovers()


def test_to_json_is_strict_json(backend) -> None:  # type: ignore[no-untyped-def]
    """Reports of an empty run list are valid JSON (no NaN)."""
    json.loads(to_json([]), parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
