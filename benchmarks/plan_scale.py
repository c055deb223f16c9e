"""Planner scale benchmark: 10,000 agents on 1,000 GPUs (binpack and spread), best of 5 runs.

    make bench            # or: .venv/bin/python benchmarks/plan_scale.py [--agents N --gpus G]

Prints one line per strategy with the wall time of ``plan(config, gpus)`` alone (config parsing excluded,
reported separately). The figure goes into docs/benchmarks.md with the machine it came from.
"""

from __future__ import annotations

import argparse
import platform
import time
from typing import Any

from colo.plan import inventory_slots, plan
from colo.spec import ColoConfig


def build(agents: int, gpus: int, placement: str) -> ColoConfig:
    models = {f"org/model-{i}": {"memory": f"{256 + 97 * i}MiB"} for i in range(40)}
    prio = ("high", "medium", "low")
    spec: dict[str, Any] = {
        f"agent-{i:05d}": {
            "models": [f"org/model-{(i * 7 + k) % 40}" for k in range(1 + i % 3)],
            "priority": prio[i % 3],
        }
        for i in range(agents)
    }
    nodes = max(1, gpus // 8)
    inventory = [{"node": f"node-{n:03d}", "name": "H100", "memory": "80GiB", "count": gpus // nodes} for n in range(nodes)]
    return ColoConfig.model_validate(
        {"gpus": inventory, "models": models, "agents": spec, "policy": {"placement": placement}}
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--agents", type=int, default=10_000)
    ap.add_argument("--gpus", type=int, default=1_000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    print(f"machine: {platform.machine()} {platform.processor() or ''} python {platform.python_version()}")
    for placement in ("binpack", "spread"):
        t0 = time.perf_counter()
        config = build(args.agents, args.gpus, placement)
        parse_s = time.perf_counter() - t0
        slots = inventory_slots(config)
        best = float("inf")
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            p = plan(config, slots)
            best = min(best, time.perf_counter() - t0)
        print(
            f"{placement:8s} agents={args.agents} gpus={len(slots)} placed={len(p.placed)} "
            f"unplaced={len(p.unplaced)} plan={best * 1000:.0f} ms (best of {args.repeat}); "
            f"config validation {parse_s * 1000:.0f} ms"
        )


if __name__ == "__main__":
    main()
