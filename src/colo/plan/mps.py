"""Which GPUs run MPS, and why: ``policy.mps`` (``gpus[].mps`` per inventory row) against the agents placed
on each GPU. Pure, part of :func:`colo.plan.plan`.

- ``auto`` (the default): MPS on a GPU with 2 or more agents; a GPU with a single agent runs it plain
  time-sliced, because MPS costs a lone process 13–16 % (bert-tiny 0.84–0.85×, roberta-base 0.85–0.87× of
  time-slicing at N = 1 on the H100 and the H200: docs/benchmarks.md, "(a) Encoder inference"), and with
  one process there is nothing to share or isolate.
- ``on``: every GPU with an agent runs MPS. ``off``: none does (``colo up --no-mps`` is ``off`` for its run).

What a GPU without MPS loses: its agents' memory limit is not pinned by MPS, and their active thread
percentage and client priority do not apply. The built-in agent then caps PyTorch's caching allocator at its
limit itself (``allocator-cap``); a ``command:`` agent is not held to its limit at all (``none``).
"""

from __future__ import annotations

from colo.plan.types import Enforcement
from colo.spec.config import MpsMode

#: Where the single-agent figure comes from (quoted in the plan's reasons).
LONE_AGENT_COST = "a lone process runs ~13–15 % faster time-sliced, measured on H100/H200 (docs/benchmarks.md)"


def decide(mode: MpsMode, agents: int, *, forced_off: str | None = None) -> tuple[bool, str]:
    """Whether a GPU with ``agents`` placed agents runs MPS under ``mode``, and the reason as one phrase
    (``"1 agent — MPS off (auto): ..."``). ``forced_off``: why MPS is off for this run whatever the policy
    (``"--no-mps"``)."""
    count = f"{agents} agent" + ("" if agents == 1 else "s")
    if agents == 0:
        return False, "no agent — no MPS daemon"
    if forced_off is not None:
        return False, f"{count} — MPS off ({forced_off}): plain time-slicing"
    if mode == "off":
        return False, f"{count} — MPS off (off): plain time-slicing"
    if mode == "on":
        return True, f"{count} — MPS on (on)"
    if agents == 1:
        return False, f"{count} — MPS off (auto): {LONE_AGENT_COST}"
    return True, f"{count} — MPS on (auto): agents share the GPU under their MPS limits"


def enforcement(mps: bool, builtin: bool) -> Enforcement:
    """How an agent's memory limit is enforced: ``mps-pinned`` on an MPS GPU, else ``allocator-cap`` for the
    built-in agent (it caps PyTorch's allocator; the CUDA context itself is not counted) and ``none`` for a
    ``command:`` agent."""
    if mps:
        return "mps-pinned"
    return "allocator-cap" if builtin else "none"
