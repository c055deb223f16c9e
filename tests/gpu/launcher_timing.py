"""Spawn -> healthy time of built-in agents, plain spawning (ProcessRunner) against the pre-imported launcher
(ForkRunner), with the launch specs colo itself builds (``launch.agent_setup``). Used by test_launcher_gpu.py;
on a machine without a GPU run it directly for the CPU figures::

    PYTHONPATH=src python tests/gpu/launcher_timing.py --device cpu --runs 5 [--agents analyst]

It prints ``RESULT launcher mode=spawn|fork agents=N spawn_to_running_s=...`` lines (the slowest agent of each
run) and a summary (median, min, max) per mode.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx

from colo.gpu.mps.env import client_env
from colo.gpu.mps.root import MpsRoot
from colo.launch.fork_runner import ForkRunner
from colo.launch.runner import LaunchSpec, ProcessHandle, ProcessRunner, Runner
from colo.plan import inventory_slots, plan
from colo.spec import load_config
from colo.supervise.agent_setup import agent_setup, builtin_port

ROOT = Path(__file__).resolve().parents[2]
NEWSROOM = ROOT / "examples" / "newsroom" / "colo.sized.yaml"
HEALTHY_WITHIN_SECS = 240.0


def launch_specs(
    config_path: Path,
    names: Sequence[str],
    *,
    device: str | None = None,
    mps: tuple[MpsRoot, str] | None = None,
) -> dict[str, tuple[LaunchSpec, int]]:
    """(launch spec, port) of each agent of ``names`` as colo would start it, with ``--device`` added when
    given; ``mps`` = (root, GPU uuid): the MPS client environment of that GPU's daemon (else no MPS)."""
    config = load_config(config_path)
    p = plan(config, inventory_slots(config))
    out = {}
    for name in names:
        ap = p.agent(name)
        assert ap is not None, f"{name} is not placed by the plan"
        spec = agent_setup(config, ap, config_copy=config_path, mps_root=None).launch
        env = {k: v for k, v in spec.env if k != "CUDA_VISIBLE_DEVICES"}
        if mps is not None:
            root, uuid = mps
            env.update(client_env(ap, root.for_gpu(uuid), gpu_uuid=uuid))
        argv = spec.argv + (("--device", device) if device else ())
        out[name] = (replace(spec, argv=argv, env=tuple(sorted(env.items())), gpu_uuid=None), builtin_port(config, name))
    return out


def _stop(runner: Runner, handles: Mapping[str, ProcessHandle]) -> None:
    for h in handles.values():
        runner.signal(h, int(signal.SIGTERM))
    deadline = time.monotonic() + 30
    live = dict(handles)
    while live and time.monotonic() < deadline:
        live = {n: h for n, h in live.items() if runner.poll(h) is None}
        time.sleep(0.05)
    for h in live.values():
        runner.signal(h, int(signal.SIGKILL))
    deadline = time.monotonic() + 10
    while live and time.monotonic() < deadline:
        live = {n: h for n, h in live.items() if runner.poll(h) is None}
        time.sleep(0.05)


def time_to_healthy(
    runner: Runner,
    specs: Mapping[str, tuple[LaunchSpec, int]],
    log_dir: Path,
    *,
    within_secs: float = HEALTHY_WITHIN_SECS,
    starts: dict[str, dict[str, Any]] | None = None,
) -> dict[str, float]:
    """Spawn every agent of ``specs`` at once; seconds from each one's spawn call to its /health 200 (and, into
    ``starts``, the ``start`` object of that first ready /health: how it was launched, its phases). Stops
    them all before returning. Raises AssertionError (with the log's tail) when one exits or is not healthy
    within ``within_secs``."""
    started: dict[str, float] = {}
    handles: dict[str, ProcessHandle] = {}
    took: dict[str, float] = {}
    try:
        for name, (spec, _) in specs.items():
            started[name] = time.monotonic()
            handles[name] = runner.spawn(spec, log_dir / f"{name}.log")
        with httpx.Client(timeout=2.0) as client:
            deadline = time.monotonic() + within_secs
            while len(took) < len(specs) and time.monotonic() < deadline:
                for name, (_, port) in specs.items():
                    if name in took:
                        continue
                    status = runner.poll(handles[name])
                    if status is not None:
                        tail = (log_dir / f"{name}.log").read_text(errors="replace")[-3000:]
                        raise AssertionError(f"{name} ended ({status.describe()}):\n{tail}")
                    try:
                        r = client.get(f"http://127.0.0.1:{port}/health")
                    except httpx.TransportError:
                        continue
                    if r.status_code == 200:
                        # only this agent counts: not one of an earlier run still answering on its port
                        assert r.json().get("pid") == handles[name].pid, f"{name}: port {port} is another's"
                        took[name] = time.monotonic() - started[name]
                        if starts is not None:
                            starts[name] = r.json().get("start") or {}
                time.sleep(0.02)
        missing = sorted(set(specs) - set(took))
        assert not missing, f"not healthy within {within_secs:.0f}s: {missing}"
        return took
    finally:
        _stop(runner, handles)


def measure(
    mode: str,
    specs: Mapping[str, tuple[LaunchSpec, int]],
    log_dir: Path,
    runs: int,
    *,
    label: str = "RESULT",
    agent: str = "bert-tiny",
    out: list[str] | None = None,
) -> list[float]:
    """``runs`` timed launches of ``specs`` (after one untimed warm-up launch), by ``mode`` (spawn or fork);
    the slowest agent's seconds of each run. Prints one line per run."""
    runner: ProcessRunner | ForkRunner = ForkRunner() if mode == "fork" else ProcessRunner()
    log_dir.mkdir(parents=True, exist_ok=True)
    try:
        if isinstance(runner, ForkRunner):
            runner.start(log_dir)
            assert runner.wait_ready(120), (log_dir / "forkserver.log").read_text(errors="replace")[-3000:]
        time_to_healthy(runner, specs, log_dir)  # warm-up: page cache; the launcher preloads the model classes
        slowest = []
        for i in range(runs):
            starts: dict[str, dict[str, Any]] = {}
            took = time_to_healthy(runner, specs, log_dir, starts=starts)
            slowest.append(max(took.values()))
            each = " ".join(f"{n}={s:.2f}" for n, s in sorted(took.items()))
            last = max(took, key=lambda n: took[n])
            line = (
                f"{label} launcher mode={mode} agent={agent} agents={len(specs)} run={i + 1} "
                f"spawn_to_running_s={max(took.values()):.2f} slowest_phases={phases_text(starts.get(last))} "
                f"each: {each}"
            )
            print(line, flush=True)
            if out is not None:
                out.append(line)
        if isinstance(runner, ForkRunner):
            assert runner.forks > 0 and not runner.fallbacks, runner.fallbacks
        return slowest
    finally:
        runner.close()


def phases_text(start: Mapping[str, Any] | None) -> str:
    """``fork:0.01,imports:0.00,...,total:0.81`` from an agent's /health ``start`` object (``none`` without)."""
    if not start:
        return "none"
    parts = [f"{k}:{v:.2f}" for k, v in (start.get("phases_secs") or {}).items()]
    return ",".join([*parts, f"total:{float(start.get('total_secs') or 0.0):.2f}"])


def summary(mode: str, secs: Sequence[float]) -> str:
    return (
        f"mode={mode} runs={len(secs)} median_s={statistics.median(secs):.2f} "
        f"min_s={min(secs):.2f} max_s={max(secs):.2f}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=NEWSROOM)
    parser.add_argument("--agents", nargs="+", default=["analyst"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--logs", type=Path, default=Path("/tmp/colo-launcher-timing"))
    args = parser.parse_args(argv)
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH")) if p)
    specs = launch_specs(args.config, args.agents, device=args.device)
    results = {mode: measure(mode, specs, args.logs / mode, args.runs) for mode in ("spawn", "fork")}
    for mode, secs in results.items():
        print("SUMMARY launcher", summary(mode, secs), f"device={args.device} agents={','.join(args.agents)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
