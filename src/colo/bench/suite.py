"""The benchmark suite behind ``docs/benchmarks.md``: ``python -m colo.bench.suite --out DIR [PART ...]``.

Parts (each a list of :class:`~colo.bench.run.BenchPlan`):

- ``encoder``: bert_uncased_L-2_H-128_A-2 (tiny) and roberta-base, fp16, batch 8 × 128 tokens, CUDA graphs,
  N = 1, 2, 4, 8, time-slicing and MPS, with the merged-batch bound;
- ``decode``: the Llama-3.1-8B-shaped bf16 decoder (static KV cache, CUDA graph), N = 1, 2, 3, both modes,
  with the merged batch (one process, N streams) as the bound;
- ``hf_decode``: distilgpt2 through transformers with a StaticCache, N = 1, 2, 4, both modes;
- ``newsroom``: the nine agents of ``examples/newsroom/colo.yaml`` under load together (each agent one process
  running its models' forwards back to back), time-slicing vs MPS.

After each run the bundle ``bench.json`` / ``bench.md`` / ``bench.png`` under ``--out`` is rewritten, so a run
cut short still leaves every finished part. A part that fails is recorded in ``bench.md`` and the suite
goes on with the next one.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from dataclasses import replace
from pathlib import Path

from colo.bench.harness import sigterm_as_exit
from colo.bench.report import write_reports
from colo.bench.results import BenchResult, PointResult
from colo.bench.run import BenchPlan, run_bench
from colo.bench.spec import InstanceSpec
from colo.errors import ColoError
from colo.files import write_atomic

PARTS = ("encoder", "decode", "newsroom", "hf_decode")  # most important first: a cut-short run keeps them
NEWSROOM = Path(__file__).resolve().parents[3] / "examples" / "newsroom" / "colo.yaml"


def encoder_plans(duration_secs: float) -> list[BenchPlan]:
    out = []
    for model in ("google/bert_uncased_L-2_H-128_A-2", "roberta-base"):
        spec = InstanceSpec(
            "encoder",
            {"model": model, "batch_size": 8, "seq_len": 128, "dtype": "float16"},
            duration_secs=duration_secs,
        )
        out.append(BenchPlan(f"encoder {model.split('/')[-1]} fp16 8×128", base=spec, concurrencies=(1, 2, 4, 8)))
    return out


def decode_plans(duration_secs: float) -> list[BenchPlan]:
    spec = InstanceSpec(
        "decode",
        {"shape": "llama-3.1-8b", "batch_size": 1, "tokens_per_request": 32, "dtype": "bfloat16"},
        duration_secs=duration_secs,
    )
    return [BenchPlan("decode Llama-3.1-8B shape bf16", base=spec, concurrencies=(1, 2, 3))]


def hf_decode_plans(duration_secs: float) -> list[BenchPlan]:
    spec = InstanceSpec(
        "hf_decode", {"model": "distilgpt2", "batch_size": 1, "tokens_per_request": 32}, duration_secs=duration_secs
    )
    return [BenchPlan("decode distilgpt2 (transformers StaticCache) fp16", base=spec, concurrencies=(1, 2, 4))]


def agent_specs(
    config_path: Path, duration_secs: float, *, batch_size: int = 8, seq_len: int = 128, dtype: str = "float16"
) -> tuple[InstanceSpec, ...]:
    """One encoder instance per agent of a colo.yaml, running each of its models' forwards in turn.

    Raises ConfigError for an unreadable or invalid file.
    """
    from colo.spec.load import load_config

    config = load_config(config_path)
    return tuple(
        InstanceSpec(
            "encoder",
            {"models": list(agent.models), "batch_size": batch_size, "seq_len": seq_len, "dtype": dtype},
            label=name,
            duration_secs=duration_secs,
        )
        for name, agent in config.agents.items()
    )


def newsroom_plans(duration_secs: float, config_path: Path = NEWSROOM) -> list[BenchPlan]:
    specs = agent_specs(config_path, duration_secs)
    return [BenchPlan("newsroom: nine agents together, fp16 8×128 per model", fixed=specs)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("parts", nargs="*", default=list(PARTS), help=f"parts to run: {', '.join(PARTS)}")
    parser.add_argument("--out", required=True, help="directory for bench.json, bench.md, bench.png")
    parser.add_argument("--duration", type=float, default=5.0, help="timed window per point, seconds")
    parser.add_argument("--gpu", type=int, default=0, help="NVML index of the GPU")
    args = parser.parse_args(argv)
    unknown = [p for p in args.parts if p not in PARTS]
    if unknown:
        parser.error(f"unknown part(s) {unknown}; use {', '.join(PARTS)}")

    from colo.gpu.nvml import NvmlBackend

    backend = NvmlBackend()
    results: list[BenchResult] = []
    failures: list[str] = []
    started = time.monotonic()

    def log(msg: str) -> None:
        print(f"[{time.monotonic() - started:6.1f}s] {msg}", flush=True)

    def show(point: PointResult) -> None:
        log(
            f"  {point.mode} N={point.concurrency}: aggregate {point.aggregate_per_sec:,.1f} {point.unit}/s, "
            f"p50 {1000 * point.latency.p50_secs:.2f} ms, SM "
            f"{point.gpu.sm_util_mean_pct if point.gpu else None}"
        )

    builders = {
        "encoder": encoder_plans,
        "decode": decode_plans,
        "hf_decode": hf_decode_plans,
        "newsroom": newsroom_plans,
    }
    for part in args.parts:
        for plan in builders[part](args.duration):
            plan = replace(plan, gpu_index=args.gpu)
            log(f"== {plan.title}")
            try:
                with sigterm_as_exit():
                    results.append(run_bench(plan, backend=backend, progress=log, on_point=show))
            except Exception as exc:  # one part failing must not lose the others
                if not isinstance(exc, ColoError):
                    traceback.print_exc()
                failures.append(f"{plan.title}: {type(exc).__name__}: {exc}")
                log(f"FAILED {plan.title}: {exc}")
            paths = write_reports(results, args.out)
            if failures:
                text = paths["md"].read_text() + "\n### Failed runs\n\n" + "\n".join(f"- {f}" for f in failures)
                write_atomic(paths["md"], text + "\n")
    log(f"done: {len(results)} runs, {len(failures)} failed; reports in {args.out}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
