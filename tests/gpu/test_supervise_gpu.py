"""Supervision drills on the shared newsroom (the session fixture ``newsroom``: examples/newsroom/colo.sized.yaml
through the real CLI, real MPS), issues 5 and 12. Each drill prints one line::

    GPU-RESULT drill=N name=... outcome=pass|fail seconds=S detect_s=D recover_s=R detail=...

1. the MPS daemon and the newsroom up: nine built-in agents RUNNING under MPS, each an MPS client (NVML) under
   its limit; 1b. one request per agent answered;
2. SIGKILL one agent -> restarted and healthy; the others' pids unchanged;
7. ``colo apply`` with one agent's limit changed -> only that agent restarted (then the old config applied back);
8. SIGKILL the MPS server -> detected (server_died), the GPU's nine agents relaunched, /infer answers again;
9. SIGKILL the MPS control daemon -> detected (daemon_died), daemon restored, agents relaunched, no zombie;
10. SIGSTOP one agent (hung) -> its /health probe fails, it is killed and restarted; the others untouched;
11. a client outside colo, started with `colo mps env`'s lines, hits a device-side assert -> what MPS contains
    is reported, and colo restarts nothing it need not;
6. SIGKILL the orchestrator, start it again -> the same pids adopted, no duplicates (after every MPS drill:
   the new orchestrator is not the MPS daemon's parent, so it could not reap it);
end. ``colo down`` -> no MPS process, no zombie, no agent left.

During drills 8-11 a checker (``newsroom.ServingChecker``) polls colo's agent states and one small ``/infer`` per
agent every ~0.2 s and counts samples where colo said RUNNING while ``/infer`` failed (target 0). Drills 1, 1b,
8 and end are the smoke (``make gpu-smoke``). Drills 3-5 (small in-process agents) are in
test_supervise_small_gpu.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import urllib.request
from typing import Any

import psutil
import pytest
import yaml
from newsroom import COLO, Newsroom, drill_result, infer_body

from colo.files import write_atomic
from testkit import health_ok, offline_child_env, wait_for

pytestmark = pytest.mark.gpu

OUTSIDE_CLIENT = r"""
import sys, torch
x = torch.zeros(2, device="cuda")
torch.cuda.synchronize()
print("outside client: CUDA up", flush=True)
index = torch.tensor([1 << 20], device="cuda")
try:
    x.index_select(0, index)
    torch.cuda.synchronize()
    print("outside client: no error?", flush=True)
except Exception as exc:
    print("outside client: " + str(exc).strip().splitlines()[0], flush=True)
    sys.exit(3)
"""



def colo_figures(room: Newsroom, seq: int) -> tuple[float | None, float | None, str]:
    """colo's own record of its recovery: (detect_s, recover_s, message) from the "recovery ... done" event."""
    done = room.events_after(seq, "restarted", "MPS fault recovery on")
    if not done:
        return None, None, ""
    msg = done[-1].message
    d = re.search(r"detect_s=([0-9.]+)", msg)
    r = re.search(r"recover_s=([0-9.]+)", msg)
    return (float(d.group(1)) if d else None, float(r.group(1)) if r else None, msg)


def mps_env_lines(room: Newsroom, agent: str) -> dict[str, str]:
    """The environment ``colo mps env AGENT`` prints (its ``export`` lines), for the newsroom's state dir."""
    e = offline_child_env()
    e["COLO_STATE_DIR"] = str(room.state_dir)
    out = subprocess.run(
        [*COLO, "mps", "env", agent, "--config", str(room.config)], env=e, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    found: dict[str, str] = {}
    for line in out.stdout.splitlines():
        if line.startswith("export "):
            key, _, value = line[len("export ") :].partition("=")
            found[key] = shlex.split(value)[0] if value else ""
    return found


def gpu_failure_drill(room: Newsroom, drill: int, name: str, kind: str, trigger: str) -> None:
    """SIGKILL the GPU's MPS ``kind`` process; colo must notice (``trigger``), relaunch the nine agents, serve."""
    room.restore()  # every drill starts from a serving newsroom (at once when it is)
    before = room.pids()
    victim = room.mps_pid(kind)
    assert victim is not None, f"no MPS {kind} of the newsroom's GPU: {room.mps_processes()}"
    seq = room.last_seq()
    with room.checker() as checker:
        t0 = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        # Expected: `trigger`; an agent that lost its context a moment earlier may start it as client_rpc_failure.
        seen = wait_for(lambda: room.events_after(seq, "mps_fault", "MPS failure on"), timeout=30, step=0.05)
        t_seen = time.monotonic() - t0

        def back() -> dict[str, dict[str, Any]] | None:
            agents = room.serving()
            if agents and all(agents[n]["pid"] != before[n] for n in before):
                return agents
            return None

        agents = wait_for(back, timeout=120, step=0.25)
        secs = time.monotonic() - t0
        checker.wait_rounds(3)  # a moment of steady serving in the checker's count
    detect, recover, msg = colo_figures(room, seq)
    ok = bool(seen) and bool(agents)
    detail = f"killed {kind} {victim}; colo saw it after {t_seen:.2f} s (observed)"
    if seen:
        detail += f"; event: {seen[0].message}"
        if f"[{trigger}]" not in seen[0].message:
            detail += f" (expected trigger {trigger})"
    detail += f"; all 9 relaunched and serving after {secs:.1f} s" if agents else f"; states: {room.states_or_empty()}"
    if kind == "control":
        new = room.mps_pid("control")
        old_zombie = psutil.pid_exists(victim) and psutil.Process(victim).status() == psutil.STATUS_ZOMBIE
        ok = ok and new is not None and new != victim and not old_zombie
        detail += f"; new daemon {new}; old daemon a zombie: {old_zombie}"
    detail += f"; {checker.summary()}; colo: {msg or 'no recovery record'}"
    room.leftovers(drill)
    unreaped = room.unreaped_zombies()
    drill_result(drill, name, ok, secs, detail, detect_s=detect if detect is not None else t_seen, recover_s=recover)
    if not ok:
        room.restore()  # leave it healthy for the next drill, then fail this one
    assert ok, detail
    assert not unreaped, f"MPS zombies colo did not reap: {[str(z) for z in unreaped]}"


@pytest.mark.smoke
@pytest.mark.newsroom_order(-2)
def test_drill1_mps_daemon_and_newsroom_up(newsroom: Newsroom) -> None:
    from colo.gpu.nvml import NvmlBackend

    agents = newsroom.agents()
    daemons = [p for p in newsroom.mps_processes() if p.kind == "control"]
    def listed() -> dict[int, Any] | None:  # NVML's process list can lag a moment behind new contexts
        procs = {p.pid: p for p in NvmlBackend().processes()}
        return procs if all(a["pid"] in procs for a in agents.values()) else None

    procs: dict[int, Any] = wait_for(listed, timeout=5, step=0.25) or {p.pid: p for p in NvmlBackend().processes()}
    problems = [] if daemons else ["no MPS control daemon of the state dir"]
    rows = []
    for name, a in sorted(agents.items()):
        p = procs.get(a["pid"])
        if p is None:
            problems.append(f"{name}: pid {a['pid']} not an NVML GPU process")
            continue
        used = p.used_memory_bytes or 0
        rows.append(f"{name}:{used // 2**20}MiB/{a['limit_bytes'] // 2**20}MiB")
        if not p.is_mps_client:
            problems.append(f"{name}: not listed as an MPS client")
        if p.used_memory_bytes is not None and used > a["limit_bytes"]:
            problems.append(f"{name}: uses {used} > limit {a['limit_bytes']}")
    def summary() -> bool:  # `colo up` says what became of the agents (issue 16)
        text = "".join(log.read_text(errors="replace") for log in newsroom.state_dir.glob("up-*.log"))
        return f"colo up: all {len(newsroom.ports)} agents RUNNING" in text

    if not wait_for(summary, timeout=10, step=0.25):
        problems.append("colo up printed no first-outcome summary")
    detail = f"MPS daemon up after {newsroom.daemon_up_secs or -1:.1f} s; 9 RUNNING and answering after "
    detail += f"{newsroom.up_secs or -1:.1f} s; " + ("; ".join(problems) or " ".join(rows))
    detail += f"; timeline: {newsroom.start_timeline()}"
    drill_result(1, "newsroom_up", not problems, newsroom.up_secs or 0.0, detail)
    assert not problems, problems


@pytest.mark.smoke
@pytest.mark.newsroom_order(-1)
def test_drill1b_one_request_per_agent(newsroom: Newsroom) -> None:
    t0 = time.monotonic()
    answers: dict[str, Any] = {}
    for name, port in newsroom.ports.items():
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/infer",
            data=infer_body(newsroom.doc, name, "markets rally as rates fall", 4),
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                answers[name] = (int(r.status), json.loads(r.read()))
        except OSError as exc:
            answers[name] = (0, str(exc))
    secs = time.monotonic() - t0
    bad = {n: a for n, a in answers.items() if a[0] != 200 or not isinstance(a[1], dict) or "model" not in a[1]}
    kinds = ",".join(sorted({str(a[1].get("kind", "generated")) for a in answers.values() if isinstance(a[1], dict)}))
    drill_result("1b", "one_request_per_agent", not bad, secs, f"{len(answers)} agents, answers of kinds {kinds}; bad: {bad or 'none'}")
    assert not bad, bad


def test_drill2_sigkill_one_agent(newsroom: Newsroom) -> None:
    newsroom.restore()
    before = newsroom.pids()
    victim = "analyst"
    t0 = time.monotonic()
    os.kill(before[victim], signal.SIGKILL)

    def back() -> dict[str, dict[str, Any]] | None:
        agents = newsroom.serving()
        if agents and agents[victim]["pid"] not in (None, before[victim]):
            return agents
        return None

    agents = wait_for(back, timeout=120, step=0.25)
    secs = time.monotonic() - t0
    ok = bool(agents)
    if agents:
        moved = [n for n in before if n != victim and agents[n]["pid"] != before[n]]
        healthy = health_ok(newsroom.ports[victim])
        ok = not moved and healthy and agents[victim]["restarts"] >= 1
        detail = f"new pid {agents[victim]['pid']}, others moved: {moved or 'none'}, /health ok: {healthy}"
    else:
        detail = f"states: {newsroom.states_or_empty()}"
        newsroom.restore()
    drill_result(2, "sigkill_agent", ok, secs, detail)
    assert ok, detail


def _apply(room: Newsroom, config: Any, agent: str, before: dict[str, int]) -> tuple[dict[str, Any], Any, float]:
    """``colo apply CONFIG --json``; waits until ``agent`` runs with a new pid and all serve. (apply's answer,
    the agents or None, seconds)."""
    t0 = time.monotonic()
    out = room.colo("apply", str(config), "--json", timeout=90)
    assert out.returncode == 0, out.stderr

    def done() -> dict[str, dict[str, Any]] | None:
        agents = room.serving()
        return agents if agents and agents[agent]["pid"] != before[agent] else None

    agents = wait_for(done, timeout=120, step=0.25)
    return json.loads(out.stdout), agents, time.monotonic() - t0


def test_drill7_apply_one_limit_changed(newsroom: Newsroom) -> None:
    newsroom.restore()
    before = newsroom.pids()
    data = yaml.safe_load(newsroom.config.read_text())
    data["agents"]["balancer"]["margin"] = "1GiB"  # limit 1.5 GiB -> 2 GiB
    new_cfg = newsroom.state_dir / "newsroom-applied.yaml"
    write_atomic(new_cfg, yaml.safe_dump(data, sort_keys=False))
    limit_before = newsroom.agents()["balancer"]["limit_bytes"]
    applied, agents, secs = _apply(newsroom, new_cfg, "balancer", before)
    ok = bool(agents) and applied["restarted"] == ["balancer"]
    detail = f"apply: {applied}"
    if agents:
        moved = [n for n in before if n != "balancer" and agents[n]["pid"] != before[n]]
        limit_after = agents["balancer"]["limit_bytes"]
        ok = ok and not moved and limit_after == limit_before + 2**29
        detail += f"; balancer limit {limit_before >> 20} -> {limit_after >> 20} MiB; others moved: {moved or 'none'}"
        # back to the newsroom's own config: the next drills see the newsroom as the fixture made it
        mid = {n: a["pid"] for n, a in agents.items()}
        back_applied, back, _ = _apply(newsroom, newsroom.config, "balancer", mid)
        restored = bool(back) and back_applied["restarted"] == ["balancer"] and back["balancer"]["limit_bytes"] == limit_before
        ok = ok and restored
        detail += f"; applied back: {back_applied['restarted']}, limit restored: {restored}"
    if not ok:
        newsroom.restore()
    drill_result(7, "apply_one_limit", ok, secs, detail)
    assert ok, detail


@pytest.mark.smoke
def test_drill8_sigkill_mps_server(newsroom: Newsroom) -> None:
    gpu_failure_drill(newsroom, 8, "sigkill_mps_server", "server", "server_died")


def test_drill9_sigkill_mps_control_daemon(newsroom: Newsroom) -> None:
    gpu_failure_drill(newsroom, 9, "sigkill_mps_daemon", "control", "daemon_died")


def test_drill10_sigstop_one_agent(newsroom: Newsroom) -> None:
    newsroom.restore()
    before = newsroom.pids()
    victim = "memory"
    t_detect = 0.0
    with newsroom.checker() as checker:
        t0 = time.monotonic()
        os.kill(before[victim], signal.SIGSTOP)
        try:
            left = wait_for(lambda: newsroom.states_or_empty().get(victim) not in (None, "RUNNING"), timeout=30, step=0.1)
            t_detect = time.monotonic() - t0

            def back() -> dict[str, dict[str, Any]] | None:
                agents = newsroom.serving()
                return agents if agents and agents[victim]["pid"] != before[victim] else None

            agents = wait_for(back, timeout=120, step=0.25)
            secs = time.monotonic() - t0
            checker.wait_rounds(3)
        finally:
            with contextlib.suppress(OSError):  # colo sent SIGCONT with its stop signal; make sure
                os.kill(before[victim], signal.SIGCONT)
    ok = bool(left) and bool(agents)
    detail = f"SIGSTOP {victim} pid {before[victim]}; left RUNNING after {t_detect:.2f} s"
    if agents:
        moved = [n for n in before if n != victim and agents[n]["pid"] != before[n]]
        ok = ok and not moved
        detail += f"; new pid {agents[victim]['pid']} serving after {secs:.1f} s; others moved: {moved or 'none'}"
    events = [e.message for e in newsroom.events_after(0) if e.agent == victim][-4:]
    detail += f"; {checker.summary()}; last events: {events}"
    newsroom.leftovers(10)
    if not ok:
        newsroom.restore()
    drill_result(10, "sigstop_agent", ok, secs, detail, detect_s=t_detect, recover_s=secs - t_detect)
    assert ok, detail


def test_drill11_outside_client_device_assert(newsroom: Newsroom) -> None:
    from colo.gpu.mps.daemon import MpsDaemon
    from colo.gpu.mps.root import MpsRoot

    newsroom.restore()
    before = newsroom.pids()
    client_env = {k: v for k, v in offline_child_env().items() if not k.startswith(("CUDA_MPS_", "CUDA_VISIBLE_DEVICES"))}
    client_env.update(mps_env_lines(newsroom, "analyst"))
    seq = newsroom.last_seq()
    uuid, _ = newsroom.gpu()
    daemon = MpsDaemon(MpsRoot.under_state_dir(newsroom.state_dir).for_gpu(uuid), uuid)
    statuses: list[str] = []

    def watch() -> list[Any]:  # MPS after the assert: a fault event ends the watch early
        with contextlib.suppress(Exception):
            statuses.append(",".join(f"{s.pid}:{s.status.value}" for s in daemon.status().servers))
        return newsroom.events_after(seq, "mps_fault")

    with newsroom.checker() as checker:
        t0 = time.monotonic()
        out = subprocess.run(
            [sys.executable, "-c", OUTSIDE_CLIENT], env=client_env, capture_output=True, text=True, timeout=120
        )
        faults = wait_for(watch, timeout=3.0, step=0.5)  # nothing may go FAULT: 3 s to show it if it does
        agents = wait_for(newsroom.serving, timeout=120 if faults else 10, step=0.25)
        secs = time.monotonic() - t0
    said = " | ".join(out.stdout.strip().splitlines()[-2:])
    asserted = out.returncode != 0 and "device-side assert" in (out.stdout + out.stderr)
    faults = newsroom.events_after(seq, "mps_fault")
    restarted = [e.agent for e in newsroom.events_after(seq) if e.kind.value in ("restarted", "started") and e.agent]
    contained = bool(agents) and not faults and all(agents[n]["pid"] == before[n] for n in before)
    recovered = bool(faults) and bool(agents)  # MPS did not contain it: colo must have recovered the GPU
    ok = asserted and (contained or recovered)
    detail = (
        f"client rc={out.returncode}: {said}; server statuses after: {sorted(set(statuses))}; "
        f"MPS contained it: {contained}; colo restarted: {restarted or 'nothing'}; "
        f"mps_fault events: {[e.message for e in faults] or 'none'}; {checker.summary()}"
    )
    newsroom.leftovers(11)
    if not agents:
        newsroom.restore()
    drill_result(11, "outside_client_device_assert", ok, secs, detail)
    assert ok, detail + (f"; client stderr: {out.stderr[-500:]}" if not asserted else "")


@pytest.mark.newsroom_order(1)
def test_drill6_orchestrator_sigkill_and_adopt(newsroom: Newsroom) -> None:
    newsroom.restore()
    before = newsroom.pids()
    orch = newsroom.orchestrator_pid()
    assert orch is not None
    last_seq = newsroom.last_seq()
    t0 = time.monotonic()
    os.kill(orch, signal.SIGKILL)
    wait_for(lambda: newsroom.orchestrator_pid() is None, timeout=20, step=0.2)
    alive = [n for n, pid in before.items() if psutil.pid_exists(pid)]
    newsroom.start_orchestrator()

    def adopted() -> dict[str, dict[str, Any]] | None:
        events = newsroom.events_after(last_seq, "adopted")
        if len({e.agent for e in events}) < len(newsroom.ports):
            return None
        return newsroom.serving()

    agents = wait_for(adopted, timeout=90, step=0.25)
    secs = time.monotonic() - t0
    # A buggy orchestrator would launch duplicates right after adopting: 3 s to show it (ends early if it does).
    started = wait_for(lambda: newsroom.events_after(last_seq, "started") + newsroom.events_after(last_seq, "restarted"), 3.0, 0.25)
    detail = f"alive while orphaned: {len(alive)}/{len(before)}; launched after restart: {[e.agent for e in started or []] or 'none'}"
    ok = bool(agents) and len(alive) == len(before) and not started
    if agents:
        changed = [n for n in before if agents[n]["pid"] != before[n]]
        counts = {}
        for n in before:
            counts[n] = sum(
                1
                for p in psutil.process_iter(["cmdline"])
                if "--agent" in (p.info["cmdline"] or [])
                and n in (p.info["cmdline"] or [])
                and str(newsroom.state_dir) in " ".join(p.info["cmdline"] or [])
            )
        dupes = {n: c for n, c in counts.items() if c > 1}
        ok = ok and not changed and not dupes
        detail += f"; pids changed: {changed or 'none'}; duplicates: {dupes or 'none'}"
    else:
        newsroom.restore()
    drill_result(6, "orchestrator_sigkill_adopt", ok, secs, detail)
    assert ok, detail


@pytest.mark.smoke
@pytest.mark.newsroom_order(2)
def test_drill_end_down_leaves_nothing(newsroom: Newsroom) -> None:
    ok, secs, detail = newsroom.down_leaves_nothing()
    drill_result("end", "down_leaves_nothing", ok, secs, detail)
    assert ok, detail
