"""Two newsrooms on two GPUs (issue 23): placement on both, one MPS control daemon per GPU, and a fault on
GPU 0 that the other GPU never feels.

NOT YET RUN ON A GPU: no two-GPU machine was lent on 2026-12-06; this file was written and checked on CPU only
(it skips there, and on any machine where NVML sees fewer than two GPUs, before anything is brought up). Its
config is planned on CPU by ``tests/unit/supervise/test_supervise_planning_two_gpus.py``.

The config is ``newsroom_doc.two_newsrooms`` of the sized newsroom (18 agents, ``gpus: auto``, placement
``spread``: the nine originals on GPU 0, the nine ``_b`` copies on GPU 1), every port moved by
:data:`PORT_OFFSET` (originals 9501-9509, copies 9601-9609; the shared newsroom is on 9301-9309, the
launcher test on 9101-9109), its API on a free port, its own state dir; brought up once for this module through
the real CLI (``newsroom.Newsroom``), always taken down (``colo down``; nothing of it may be left).

- ``colo plan --json`` and ``colo render explain`` on the machine put agents on both GPUs and say so;
- after ``colo up``: one control daemon per GPU, every agent an MPS client of its own GPU (colo's API and
  ``colo status --json``, NVML's MPS process list);
- two drills, each under a checker per GPU (one small ``/infer`` per agent every ~0.2 s): SIGKILL of GPU 0's
  MPS server, then of GPU 0's control daemon. Asserted: the fault is seen on GPU 0 and only there, the other
  GPU's agents fail 0 requests and its MPS processes are the same ones, GPU 0's agents all answer again
  (0 samples RUNNING while failing) as MPS clients of GPU 0. Target (printed, not asserted, as in
  ``test_shared_fate_gpu.py``): GPU 0's agents all answering ≤ 3 s after the kill. Result lines::

    GPU-RESULT drill=two_gpus_<name> name=<name> outcome=pass|fail seconds=S detect_s=D recover_s=R detail=...

- issue 23, item 4 (checked on CPU by ``tests/unit/bench/test_bench_agents_gpus.py``,
  ``tests/unit/cli/test_cli_tune_two_gpus.py`` and ``tests/unit/supervise/test_supervise_apply_move.py``):
  ``colo bench agents --attach-config --json`` gives each GPU's aggregate (nine agents each, > 0 seq/s) and
  their sum, with 0 errors; ``colo tune --json`` lists each agent under the GPU colo runs it on and per GPU its
  nine agents' allocation (trusted proposals printed, not asserted: they need a minute of history); ``colo
  apply`` pinning ``analyst_b`` to GPU 0, then back to GPU 1, relaunches only it (as an MPS client of the new
  GPU: colo's API and NVML) while the other 17 keep their pids and fail 0 requests under a checker, and the
  file without the pin restarts nothing (the running placement is kept). Result lines
  ``drill=two_gpus_bench|two_gpus_tune|two_gpus_apply``;
- ``colo down``: exits 0; no MPS process, process or unreaped zombie of the state dir is left
  (``Newsroom.left_after_down``).

Run on a machine with two GPUs: ``pytest -m gpu -q -s tests/gpu/test_two_gpus_gpu.py``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from mps_daemons import gpus_with_mps
from newsroom import COLO, SIZED, Newsroom, drill_result, running_newsroom

from colo.gpu.nvml import GpuSnapshot
from newsroom_doc import two_newsrooms
from testkit import free_port, offline_child_env, wait_for, wait_until_empty

pytestmark = pytest.mark.gpu

#: The two newsrooms' ports moved up by this: 9501-9509 and 9601-9609, apart from every other GPU test's.
PORT_OFFSET = 400
DETECT_WAIT_SECS = 10.0
RECOVER_WAIT_SECS = 25.0
TARGET_ANSWERING_SECS = 3.0  # the single-GPU target: all of the faulted GPU's agents answering again
_FIGURES = re.compile(r"detect_s=(?P<d>[\d.]+) recover_s=(?P<r>[\d.]+)")
BENCH_TIMEOUT_SECS = 300
MOVE_WAIT_SECS = 120.0  # the moved agent RUNNING, answering, on its new GPU (it loads its models again)
#: The agent ``colo apply`` moves from GPU 1 to GPU 0 and back (the first of GPU 1's when it is not there).
MOVER = "analyst_b"


@pytest.fixture(scope="module")
def gpus() -> list[GpuSnapshot]:
    """NVML's GPUs; skips (before anything is brought up) without MPS or with fewer than two GPUs."""
    found = gpus_with_mps()
    if len(found) < 2:
        pytest.skip(f"needs 2 GPUs, NVML sees {len(found)}: two newsrooms on two GPUs are checked on a 2-GPU machine")
    return found


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    two: dict[str, Any] = two_newsrooms(yaml.safe_load(SIZED.read_text()))
    return two


@pytest.fixture(scope="module")
def room(gpus: list[GpuSnapshot], doc: dict[str, Any]) -> Iterator[Newsroom]:
    """The two newsrooms up and serving once for this module; always closed."""
    two = Newsroom(doc=doc, port_offset=PORT_OFFSET, api_port=free_port(), label="two_gpus")
    with running_newsroom(two) as up:
        yield up


def colo_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """``colo ARGS`` as a user runs it (no state dir)."""
    return subprocess.run([*COLO, *args], env=offline_child_env(), capture_output=True, text=True, timeout=120)


def by_gpu(room: Newsroom) -> dict[str, list[str]]:
    """GPU UUID -> the agents colo placed on it (its API)."""
    out: dict[str, list[str]] = {}
    for name, a in sorted(room.agents().items()):
        out.setdefault(str(a.get("gpu_uuid")), []).append(name)
    return out


def not_clients_of_their_gpu(room: Newsroom) -> list[str]:
    """Agents that are not MPS clients of the GPU colo placed them on: colo's ``mps_client`` is not true, or
    NVML does not list the agent's pid as an MPS client (``M+C``) on that GPU. Empty: the invariant holds."""
    from colo.gpu.nvml import NvmlBackend

    backend = NvmlBackend()
    try:
        rows = [(p.pid, p.gpu_uuid) for p in backend.processes() if p.is_mps_client]
    finally:
        backend.close()
    out = []
    for name, a in sorted(room.agents().items()):
        pid = int(a.get("pid") or 0)
        if a.get("mps_client") is not True:
            out.append(f"{name}: colo says mps_client={a.get('mps_client')}")
        elif (pid, a.get("gpu_uuid")) not in rows:
            out.append(f"{name}: NVML lists no MPS client {pid} on {a.get('gpu_uuid')}")
    return out


def wait_clients_of_their_gpu(room: Newsroom, timeout: float = 10.0) -> list[str]:
    """:func:`not_clients_of_their_gpu` once it is empty, or its last answer after ``timeout`` s (colo judges
    once a GPU reading, once a second)."""
    return wait_until_empty(lambda: not_clients_of_their_gpu(room), timeout)


def test_two_gpus_plan_and_explain_place_agents_on_both_gpus(gpus: list[GpuSnapshot], doc: dict[str, Any], tmp_path: Path) -> None:
    t0 = time.monotonic()
    config = tmp_path / "two-newsrooms.yaml"
    config.write_text(yaml.safe_dump(doc, sort_keys=False))
    plan = colo_cli("plan", str(config), "--json", "--state-dir", str(tmp_path / "state"))
    assert plan.returncode == 0, plan.stderr
    counts = [len(g["agents"]) for g in json.loads(plan.stdout)["colo"]["gpus"]]
    explain = colo_cli("render", "explain", str(config))
    assert explain.returncode == 0, explain.stderr
    placed = [ln for ln in explain.stdout.splitlines() if " -> gpu" in ln]
    on0, on1 = sum(" -> gpu0:" in ln for ln in placed), sum(" -> gpu1:" in ln for ln in placed)
    ok = sum(counts) == 18 and sum(1 for c in counts if c) >= 2 and len(placed) == 18 and on0 > 0 and on1 > 0
    drill_result("two_gpus_plan", "plan_on_both_gpus", ok, time.monotonic() - t0,
                 f"agents per GPU {counts} ({len(gpus)} GPUs); explain: gpu0={on0} gpu1={on1}")
    assert sum(counts) == 18 and sum(1 for c in counts if c) >= 2, plan.stdout
    assert len(placed) == 18 and on0 > 0 and on1 > 0, explain.stdout


def test_two_gpus_up_one_daemon_per_gpu_each_agent_a_client_of_its_own_gpu(room: Newsroom) -> None:
    t0 = time.monotonic()
    placed = by_gpu(room)
    daemons = {uuid: [p.pid for p in room.mps_processes(uuid) if p.kind == "control"] for uuid in placed}
    outside = wait_clients_of_their_gpu(room)
    out = room.colo("status", "--json")
    shown = sum(1 for a in json.loads(out.stdout)["agents"] if a.get("mps_client") is True) if out.returncode == 0 else 0
    ok = len(placed) >= 2 and "None" not in placed and all(len(d) == 1 for d in daemons.values()) and not outside
    drill_result(
        "two_gpus_up", "one_daemon_per_gpu", ok and shown == 18, time.monotonic() - t0,
        f"up_s={room.up_secs or 0:.1f} agents per GPU {[len(v) for v in placed.values()]} daemons {daemons}"
        f" outside={outside or 'none'} colo_status_mps_client={shown}/18",
    )
    assert len(placed) >= 2 and "None" not in placed, placed
    assert all(len(d) == 1 for d in daemons.values()), daemons
    assert not outside, outside
    assert shown == 18, out.stdout


@pytest.mark.parametrize(
    ("name", "kind", "triggers"),
    [
        ("server_sigkill", "server", ("server_died", "client_rpc_failure", "client_mps_error")),
        ("daemon_sigkill", "control", ("daemon_died",)),
    ],
)
def test_two_gpus_drill_on_gpu_0_leaves_the_other_gpu_serving(
    room: Newsroom, gpus: list[GpuSnapshot], name: str, kind: str, triggers: tuple[str, ...]
) -> None:
    room.restore()
    u0 = gpus[0].uuid
    placed = by_gpu(room)
    first = placed.get(u0, [])
    rest = [n for uuid, names in placed.items() if uuid != u0 for n in names]
    assert first and rest, f"the plan must use GPU 0 and another: {placed}"
    others_mps = sorted(p for uuid in placed if uuid != u0 for p in room.mps_processes(uuid))
    seq = room.last_seq()
    t0 = time.monotonic()
    ok, why, detect, recover = False, "", None, None
    try:
        with room.checker(first) as c0, room.checker(rest) as c1:
            c0.wait_rounds(3)
            c1.wait_rounds(3)
            victim = room.mps_pid(kind, u0)
            assert victim is not None, f"no MPS {kind} of GPU 0 ({u0})"
            t0 = time.monotonic()
            os.kill(victim, signal.SIGKILL)

            def faults() -> list[Any]:
                return [e for e in room.events_after(seq, "mps_fault") if any(f"[{t}]" in e.message for t in triggers)]

            found = wait_for(faults, timeout=DETECT_WAIT_SECS, step=0.1)
            serving, not_serving = True, ""
            try:
                room.wait_all_running(RECOVER_WAIT_SECS)
            except AssertionError as exc:
                serving, not_serving = False, str(exc)
            c0.wait_rounds(3)
            c1.wait_rounds(3)
        figures = [m.groupdict() for e in room.events_after(seq) if (m := _FIGURES.search(e.message))]
        if figures:
            detect, recover = float(figures[-1]["d"]), float(figures[-1]["r"])
        elsewhere = sorted({str(e.gpu) for e in room.events_after(seq, "mps_fault") if e.gpu != u0})
        others_after = sorted(p for uuid in placed if uuid != u0 for p in room.mps_processes(uuid))
        outside = wait_clients_of_their_gpu(room) if serving else ["not serving"]
        failed_elsewhere = sum(c1.failed_requests.values())
        answering = c0.all_answering_again_at - t0 if c0.all_answering_again_at is not None else None
        ok = (
            bool(found) and serving and failed_elsewhere == 0 and not elsewhere and others_after == others_mps
            and c0.running_while_failing == 0 and not outside
        )
        why = (
            f"killed {kind} {victim} of GPU 0; detected={bool(found)} gpu0_all_answering_s="
            f"{f'{answering:.2f}' if answering is not None else '-'} (target {TARGET_ANSWERING_SECS:g} s"
            f"{'' if answering is None or answering <= TARGET_ANSWERING_SECS else ', MISSED'}); gpu0: {c0.summary()};"
            f" other GPU(s): {c1.summary()}; faults elsewhere={elsewhere or 'none'};"
            f" other MPS processes unchanged={others_after == others_mps}; outside={outside or 'none'} {not_serving}"
        )
        assert found, f"no mps_fault event with {triggers} within {DETECT_WAIT_SECS:g} s"
        assert failed_elsewhere == 0, f"the other GPU's agents failed requests: {c1.summary()}"
        assert not elsewhere and others_after == others_mps, (elsewhere, others_mps, others_after)
        assert serving, not_serving
        assert c0.running_while_failing == 0, c0.summary()
        assert not outside, outside
    finally:
        drill_result(f"two_gpus_{name}", name, ok, time.monotonic() - t0, why, detect_s=detect, recover_s=recover)
        room.leftovers(f"two_gpus_{name}")
        with contextlib.suppress(AssertionError):
            room.restore()


def test_two_gpus_bench_agents_reports_each_gpu_and_the_sum(room: Newsroom, gpus: list[GpuSnapshot]) -> None:
    """``colo bench agents --attach-config`` on the running two newsrooms: each GPU's aggregate and the sum
    (``settings.by_gpu`` of ``--json``; the terminal's "per GPU" table is the same data)."""
    room.restore()
    t0 = time.monotonic()
    out = room.colo(
        "bench", "agents", str(room.config), "--attach-config", "--mode", "mps", "-n", "1", "--duration", "5",
        "--warmup", "1", "--out", str(room.state_dir / "bench"), "--json", timeout=BENCH_TIMEOUT_SECS,
    )
    ok, detail = out.returncode == 0, out.stderr[-300:]
    by_gpu: list[dict[str, Any]] = []
    if ok:
        (run,) = json.loads(out.stdout)["runs"]
        by_gpu = run["settings"].get("by_gpu") or []
    entry = by_gpu[0] if by_gpu else {"gpus": [], "all": {}}
    per = {g["gpu"]: g for g in entry["gpus"]}
    total = entry["all"].get("seq_per_sec", 0.0)
    summed = sum(g["seq_per_sec"] for g in per.values())
    ok = ok and len(per) == 2 and all(len(g["agents"]) == 9 and g["seq_per_sec"] > 0 for g in per.values())
    ok = ok and abs(total - summed) <= 1e-6 * max(total, 1.0) and entry["all"].get("hard_errors") == 0
    if out.returncode == 0:
        detail = " ".join(f"{k}={g['seq_per_sec']:.1f}seq/s({len(g['agents'])})" for k, g in sorted(per.items()))
        detail += f" all={total:.1f}seq/s errors={entry['all'].get('hard_errors')} ({len(gpus)} GPUs)"
    drill_result("two_gpus_bench", "bench_per_gpu_and_sum", ok, time.monotonic() - t0, detail)
    assert out.returncode == 0, out.stderr
    assert sorted(per) == ["local:0", "local:1"], entry
    assert all(len(g["agents"]) == 9 and g["seq_per_sec"] > 0 for g in per.values()), per
    assert total == pytest.approx(summed) and entry["all"]["hard_errors"] == 0, entry


def test_two_gpus_tune_proposes_per_gpu(room: Newsroom, gpus: list[GpuSnapshot]) -> None:
    """``colo tune --json`` on the running two newsrooms: each agent under the GPU colo runs it on, and per GPU
    its nine agents' allocation now (and as proposed). Whether each proposal is trusted depends on how much
    history the module has made by then (at least 6 windows over a minute): printed, not asserted."""
    t0 = time.monotonic()
    out = room.colo("tune", str(room.config), "--json", timeout=120)
    placed = {name: str(a.get("gpu") or "") for name, a in room.agents().items()}  # "local:0"
    label = {key: "gpu" + key.rsplit(":", 1)[-1] for key in set(placed.values())}
    report: dict[str, Any] = json.loads(out.stdout) if out.returncode == 0 else {"agents": [], "gpus": []}
    by = {a["agent"]: a for a in report["agents"]}
    per = {g["gpu"]: g for g in report["gpus"]}
    wrong = sorted(n for n, key in placed.items() if by.get(n, {}).get("gpu") != label[key])
    sums = {
        g: (per[g]["before_bytes"], sum(by[n]["current_bytes"] for n in per[g]["agents"] if n in by)) for g in per
    }
    ok = out.returncode == 0 and sorted(per) == ["gpu0", "gpu1"] and not wrong
    ok = ok and all(len(g["agents"]) == 9 for g in per.values()) and all(a == b for a, b in sums.values())
    trusted = sum(1 for a in by.values() if a["trusted"])
    detail = (
        f"gpus={sorted(per)} agents per GPU {[len(g['agents']) for g in per.values()]} misplaced={wrong or 'none'}"
        f" trusted={trusted}/18 " + " ".join(f"{g}: {per[g]['text']}" for g in sorted(per))
    )
    drill_result("two_gpus_tune", "tune_per_gpu", ok, time.monotonic() - t0, detail if out.returncode == 0 else out.stderr)
    assert out.returncode == 0, out.stderr
    assert sorted(per) == ["gpu0", "gpu1"] and not wrong, (per, wrong)
    assert all(len(g["agents"]) == 9 for g in per.values()), per
    assert all(a == b for a, b in sums.values()), sums


def _apply_move(room: Newsroom, tmp_path: Path, mover: str, pin: int | None, target_uuid: str) -> tuple[bool, str]:
    """``colo apply`` of the newsrooms' config with ``mover`` pinned to GPU ``pin`` (None: their own file),
    every other agent under a checker the whole time. True when only ``mover`` restarted and is RUNNING, answering and an
    MPS client of ``target_uuid``, and every other agent kept its pid and failed no request."""
    path = room.config  # no pin: the newsrooms' own file (what a SIGHUP reads again afterwards)
    if pin is not None:
        doc = json.loads(json.dumps(room.doc))
        doc["agents"][mover]["gpu"] = pin
        path = tmp_path / f"move-{mover}-{pin}.yaml"
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
    before = room.pids()
    rest = [n for n in room.ports if n != mover]
    with room.checker(rest) as c:
        c.wait_rounds(3)
        out = room.colo("apply", str(path), "--json", timeout=120)
        result: dict[str, Any] = json.loads(out.stdout) if out.returncode == 0 else {}

        def moved() -> bool:
            a = room.agents().get(mover, {})
            return a.get("state") == "RUNNING" and a.get("gpu_uuid") == target_uuid and room.infer_ok(mover, 5.0)

        there = bool(wait_for(moved, timeout=MOVE_WAIT_SECS, step=0.5)) if out.returncode == 0 else False
        c.wait_rounds(3)
    after = room.pids()
    kept = {n: (before.get(n), after.get(n)) for n in rest if before.get(n) != after.get(n)}
    outside = wait_clients_of_their_gpu(room) if there else ["not moved"]
    expect_restart = [mover] if pin is not None else []
    ok = (
        out.returncode == 0 and result.get("restarted") == expect_restart and there and not kept
        and sum(c.failed_requests.values()) == 0 and c.running_while_failing == 0 and not outside
    )
    detail = (
        f"{mover} pin={pin}: restarted={result.get('restarted')} on_target={there} pid {before.get(mover)}->"
        f"{after.get(mover)}; others: pids changed={kept or 'none'} {c.summary()}; outside={outside or 'none'}"
        f" {out.stderr[-200:] if out.returncode else ''}"
    )
    return ok, detail


def test_two_gpus_apply_moves_one_agent_and_the_rest_keep_serving(
    room: Newsroom, gpus: list[GpuSnapshot], tmp_path: Path
) -> None:
    """``colo apply`` pinning one agent of GPU 1 to GPU 0 relaunches only it (stopped on GPU 1, started as an
    MPS client of GPU 0's daemon); the other 17 keep their pids and answer throughout (a checker on them, one
    small ``/infer`` each every ~0.2 s). Then back (pinned to GPU 1), then the config without the pin: the
    running placement is kept, nothing restarts."""
    room.restore()
    u0 = gpus[0].uuid
    placed = by_gpu(room)
    others = [n for uuid, names in placed.items() if uuid != u0 for n in names]
    assert others, f"the plan must use a GPU besides GPU 0: {placed}"
    mover = MOVER if MOVER in others else others[0]
    home = next(g for g in gpus if g.uuid == room.agents()[mover]["gpu_uuid"])
    t0 = time.monotonic()
    ok0, there = _apply_move(room, tmp_path, mover, gpus[0].index, u0)
    drill_result("two_gpus_apply", "move_to_gpu0", ok0, time.monotonic() - t0, there)
    t1 = time.monotonic()
    ok1, back = _apply_move(room, tmp_path, mover, home.index, home.uuid)
    drill_result("two_gpus_apply", "move_back", ok1, time.monotonic() - t1, back)
    t2 = time.monotonic()
    ok2, unpinned = _apply_move(room, tmp_path, mover, None, home.uuid)
    drill_result("two_gpus_apply", "unpinned_keeps_placement", ok2, time.monotonic() - t2, unpinned)
    assert ok0, there
    assert ok1, back
    assert ok2, unpinned


def test_two_gpus_down_leaves_nothing(room: Newsroom) -> None:
    ok, secs, detail = room.down_leaves_nothing()
    drill_result("two_gpus_down", "down_leaves_nothing", ok, secs, detail)
    assert ok, detail
