"""The GPU suite's machinery: which lane runs a test, in what order, the per-test records and the per-file table.

``scripts/gpu_suite.sh`` runs three pytest processes at once (lanes ``a``, ``b``, ``c``; ``COLO_GPU_LANE``), so
that the whole suite fits one 10-minute device call:

- lane ``a``: every test that uses the session ``newsroom`` fixture (the drills, the newsroom's agents), first,
  in ``newsroom_order`` order; then the files of :data:`FILE_LANES` marked ``a``;
- lanes ``b`` and ``c``: the other files, as :data:`FILE_LANES` says (a file not listed runs in ``c``).

Lanes share the GPU and the CPUs, not ports, state dirs or pipe dirs. Each pytest process appends one JSON line
per test to ``COLO_GPU_RESULTS`` (``collected`` lines first, then ``ran`` lines with outcome and seconds: setup
+ call + teardown), so a lane killed at its time limit still tells what ran. ``python3 tests/gpu/suite.py
RESULTS...`` prints the table: one row per file (tests, passed, failed, skipped, not run, seconds, result), or
one row per test (``--steps``, the smoke's).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

LANES = ("a", "b", "c")
NEWSROOM_LANE = "a"
DEFAULT_LANE = "c"
FILE_LANES = {
    "test_launcher_gpu.py": "b",
    "test_memory_gpu.py": "b",
    "test_bench_gpu.py": "b",
    "test_bench_agents_gpu.py": "b",
    "test_mps_auto_gpu.py": "b",
}
OUTCOMES = ("passed", "failed", "error", "skipped")


def lane_of(path: str, uses_newsroom: bool) -> str:
    """The lane of a test in file ``path`` (a test of the newsroom runs in lane ``a``, whatever its file)."""
    if uses_newsroom:
        return NEWSROOM_LANE
    return FILE_LANES.get(Path(path).name, DEFAULT_LANE)


def run_order(uses_newsroom: Sequence[bool], newsroom_orders: Sequence[int]) -> list[int]:
    """Indexes of the collected tests in run order: the newsroom's tests first (by ``newsroom_order``, stable),
    then the others as collected."""
    idx = range(len(uses_newsroom))
    room = sorted((i for i in idx if uses_newsroom[i]), key=lambda i: newsroom_orders[i])
    return room + [i for i in idx if not uses_newsroom[i]]


def merge_outcome(so_far: str | None, when: str, outcome: str) -> str:
    """A test's outcome after one of its phases (``setup``/``call``/``teardown``; pytest's passed, failed,
    skipped): a failed setup or teardown is an ``error``, a failed call ``failed``; the worst phase wins."""
    if outcome == "failed":
        now = "failed" if when == "call" else "error"
    elif outcome == "skipped":
        now = "skipped"
    else:
        now = "passed"
    rank = {"passed": 0, "skipped": 1, "failed": 2, "error": 3}
    if so_far is None:
        return now
    if so_far == "skipped" and now == "passed":  # a skipped test's teardown passes: still skipped
        return so_far
    return now if rank[now] > rank[so_far] else so_far


def file_of(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


@dataclass
class FileRow:
    """One file's tests in this run."""

    file: str
    collected: int = 0
    outcomes: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OUTCOMES, 0))
    seconds: float = 0.0

    @property
    def ran(self) -> int:
        return sum(self.outcomes.values())

    @property
    def not_run(self) -> int:
        return max(0, self.collected - self.ran)

    @property
    def result(self) -> str:
        if self.outcomes["failed"] or self.outcomes["error"]:
            return "FAILED"
        if self.not_run:
            return "INCOMPLETE"
        if self.outcomes["passed"] == 0:
            return "skipped"
        return "passed"


@dataclass(frozen=True)
class TestRow:
    nodeid: str
    outcome: str
    seconds: float


def read_records(lines: Iterable[str]) -> tuple[list[str], dict[str, TestRow]]:
    """(collected node ids in order, the last ``ran`` record of each) from JSON lines; broken lines skipped."""
    collected: list[str] = []
    ran: dict[str, TestRow] = {}
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if rec.get("event") == "collected" and rec["nodeid"] not in collected:
            collected.append(rec["nodeid"])
        elif rec.get("event") == "ran":
            ran[rec["nodeid"]] = TestRow(rec["nodeid"], rec["outcome"], float(rec["seconds"]))
    return collected, ran


def file_rows(collected: Sequence[str], ran: dict[str, TestRow]) -> list[FileRow]:
    """One row per file, sorted by file name."""
    rows: dict[str, FileRow] = {}
    for nodeid in [*collected, *(n for n in ran if n not in collected)]:
        row = rows.setdefault(file_of(nodeid), FileRow(file_of(nodeid)))
        row.collected += 1
        if nodeid in ran:
            row.outcomes[ran[nodeid].outcome] += 1
            row.seconds += ran[nodeid].seconds
    return [rows[k] for k in sorted(rows)]


def file_table(rows: Sequence[FileRow]) -> list[str]:
    """The per-file table as text lines (and a total line)."""
    head = f"{'file':<32}{'tests':>6}{'passed':>7}{'failed':>7}{'errors':>7}{'skipped':>8}{'not run':>8}{'seconds':>9}  result"
    out = [head]
    total = FileRow("total")
    for r in rows:
        out.append(
            f"{Path(r.file).name:<32}{r.collected:>6}{r.outcomes['passed']:>7}{r.outcomes['failed']:>7}"
            f"{r.outcomes['error']:>7}{r.outcomes['skipped']:>8}{r.not_run:>8}{r.seconds:>9.1f}  {r.result}"
        )
        total.collected += r.collected
        total.seconds += r.seconds
        for k in OUTCOMES:
            total.outcomes[k] += r.outcomes[k]
    out.append(
        f"{'total (lanes overlap)':<32}{total.collected:>6}{total.outcomes['passed']:>7}"
        f"{total.outcomes['failed']:>7}{total.outcomes['error']:>7}{total.outcomes['skipped']:>8}"
        f"{total.not_run:>8}{total.seconds:>9.1f}  {total.result}"
    )
    return out


def markdown_rows(rows: Sequence[FileRow]) -> list[str]:
    """The table's rows as docs/testing.md writes them: ``| file | seconds | result (passed/failed/...) |``."""
    out = []
    for r in rows:
        counts = ", ".join(f"{n} {k}" for k, n in r.outcomes.items() if n) or "none ran"
        if r.not_run:
            counts += f", {r.not_run} not run"
        out.append(f"| `{Path(r.file).name}` | {r.seconds:.0f} | {r.result} ({counts}) |")
    return out


def step_lines(collected: Sequence[str], ran: dict[str, TestRow]) -> list[str]:
    """One line per test, in the order they ran (the smoke's steps), with seconds and outcome."""
    order = [n for n in ran] + [n for n in collected if n not in ran]
    out = []
    for i, nodeid in enumerate(order, 1):
        row = ran.get(nodeid)
        name = nodeid.rsplit("::", 1)[-1]
        if row is None:
            out.append(f"step {i:>2}  {name:<48} {'-':>7}    not run")
        else:
            out.append(f"step {i:>2}  {name:<48} {row.seconds:>6.1f} s  {row.outcome}")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Print the GPU suite's table from its JSON-lines records.")
    ap.add_argument("records", nargs="+", type=Path, help="COLO_GPU_RESULTS files (missing ones are skipped)")
    ap.add_argument("--steps", action="store_true", help="one line per test (the smoke) instead of per file")
    ap.add_argument("--markdown", type=Path, help="also write the rows for docs/testing.md here")
    args = ap.parse_args(argv)
    lines: list[str] = []
    for path in args.records:
        if path.is_file():
            lines += path.read_text(errors="replace").splitlines()
    collected, ran = read_records(lines)
    if args.steps:
        print("\n".join(step_lines(collected, ran)))
        failed = [r for r in ran.values() if r.outcome in ("failed", "error")]
        return 1 if failed or len(ran) < len(collected) or not collected else 0
    rows = file_rows(collected, ran)
    print("\n".join(file_table(rows)))
    if args.markdown:
        args.markdown.write_text("\n".join(markdown_rows(rows)) + "\n")
    return 0 if rows and all(r.result in ("passed", "skipped") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
