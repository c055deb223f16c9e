"""Supervision drills 3-5 on a real GPU with real MPS (issues 5 and 12): an in-process Orchestrator with small
torch agents (``AGENT_PY``), one state dir per drill. Each drill prints one line::

    GPU-RESULT drill=N name=... outcome=pass|fail seconds=S detail=...

3. an agent that always exits -> BACKOFF then FATAL, shown by ``colo status --json``;
4. an agent that allocates past its MPS limit -> it alone fails with out-of-memory (event); the other serves;
5. a client launches an illegal-address kernel -> MPS FAULT detected, every agent on that GPU RUNNING again.

The newsroom's drills (1, 2, 6-11, end) are in test_supervise_gpu.py. Every MPS daemon is quit and every
process killed in teardown, always.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from leftovers import clean_state_dir
from newsroom import COLO, drill_result

from testkit import free_port, health_ok, offline_child_env, wait_for

pytestmark = pytest.mark.gpu

# A small GPU agent for drills 3-5: "serve PORT" (CUDA up, /health runs a CUDA op), "hog PORT" (allocates past
# its limit), "exit CODE". With FAULT_TRIGGER set, it launches an illegal-address kernel when that file appears.
AGENT_PY = r'''
import http.server, os, sys, threading, time
mode = sys.argv[1]
if mode == "exit":
    print("exiting on purpose", flush=True)
    sys.exit(int(sys.argv[2]))
port = int(sys.argv[2])
import torch
x = torch.ones(16 * 1024 * 1024, device="cuda")
torch.cuda.synchronize()
print(f"cuda ready pid={os.getpid()} limit={os.environ.get('CUDA_MPS_PINNED_DEVICE_MEM_LIMIT')}", flush=True)
if mode == "hog":
    chunks = []
    for i in range(400):
        chunks.append(torch.empty(256 * 1024 * 1024, dtype=torch.uint8, device="cuda"))
        print(f"allocated {(i + 1) * 256} MiB", flush=True)
    print("hog: the limit was not enforced", flush=True)
    sys.exit(5)

PTX = """
.version {version}
.target {target}
.address_size 64
.visible .entry colo_bad()
{{
    .reg .b64 %rd<2>;
    .reg .b32 %r<2>;
    mov.u64 %rd1, 16;
    mov.u32 %r1, 1;
    st.global.u32 [%rd1], %r1;
    ret;
}}
"""

def fault():
    import ctypes
    cu = ctypes.CDLL("libcuda.so.1")
    dev, ctx, mod, fn = ctypes.c_int(), ctypes.c_void_p(), ctypes.c_void_p(), ctypes.c_void_p()
    steps = [
        ("cuDeviceGet", lambda: cu.cuDeviceGet(ctypes.byref(dev), 0)),
        ("cuDevicePrimaryCtxRetain", lambda: cu.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), dev)),
        ("cuCtxSetCurrent", lambda: cu.cuCtxSetCurrent(ctx)),
    ]
    for name, call in steps:
        rc = call()
        if rc != 0:
            print(f"FAULT-INJECTION-FAILED {name} returned {rc}", flush=True)
            os._exit(9)
    tried = []
    for version, target in (("8.0", "sm_80"), ("8.0", "sm_90"), ("7.0", "sm_70")):
        text = PTX.format(version=version, target=target).encode()
        rc = cu.cuModuleLoadData(ctypes.byref(mod), ctypes.c_char_p(text))
        tried.append(f"{target}:{rc}")
        if rc == 0:
            break
    else:
        print(f"FAULT-INJECTION-FAILED cuModuleLoadData {tried}", flush=True)
        os._exit(9)
    rc = cu.cuModuleGetFunction(ctypes.byref(fn), mod, b"colo_bad")
    if rc != 0:
        print(f"FAULT-INJECTION-FAILED cuModuleGetFunction returned {rc}", flush=True)
        os._exit(9)
    print(f"launching an illegal-address kernel (PTX {tried[-1]})", flush=True)
    launch = cu.cuLaunchKernel(fn, 1, 1, 1, 1, 1, 1, 0, None, None, None)
    sync = cu.cuCtxSynchronize()
    print(f"cuLaunchKernel={launch} cuCtxSynchronize={sync}", flush=True)
    if 700 in (launch, sync):
        print("CUDA error: an illegal memory access was encountered (CUDA_ERROR_ILLEGAL_ADDRESS 700)", flush=True)
    os._exit(1)

class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        try:
            float((x[:1] + 1).sum().item())
            code = 200
        except Exception as exc:
            print(f"health: CUDA error: {exc}", flush=True)
            code = 500
        self.send_response(code)
        self.end_headers()
        self.wfile.write(b"ok" if code == 200 else b"cuda error")

    def log_message(self, *args):
        pass

server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Health)
threading.Thread(target=server.serve_forever, daemon=True).start()
trigger = os.environ.get("FAULT_TRIGGER")
while True:
    if trigger and os.path.exists(trigger):
        os.unlink(trigger)
        fault()
    time.sleep(0.1)
'''



def colo_status(sd: Path) -> dict[str, Any]:
    out = subprocess.run(
        [*COLO, "status", "--json", "--state-dir", str(sd)], env=offline_child_env(), capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0, out.stderr
    data: dict[str, Any] = json.loads(out.stdout)
    return data


@pytest.fixture
def small() -> Iterator[dict[str, Any]]:
    sd = Path(tempfile.mkdtemp(prefix="cd", dir="/tmp"))
    (sd / "agent.py").write_text(AGENT_PY)
    box: dict[str, Any] = {"sd": sd, "orch": None}
    try:
        yield box
    finally:
        orch = box.get("orch")
        if orch is not None:
            with contextlib.suppress(Exception):
                orch.down(timeout_secs=20)
        clean_state_dir(sd)


def small_config(sd: Path, agents: dict[str, dict[str, Any]]) -> Any:
    from colo.spec import load_config_text

    doc = {
        "version": 1,
        "gpus": "auto",
        "models": {"tiny": {"memory": "512MiB"}},
        "agents": agents,
    }
    return load_config_text(yaml.safe_dump(doc), str(sd / "drill.yaml"))


def serve_agent(sd: Path, port: int, *, mode: str = "serve", extra_env: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "models": ["tiny"],
        "margin": "512MiB",  # limit 1 GiB
        "command": [sys.executable, str(sd / "agent.py"), mode, str(port)],
        "env": extra_env or {},
        "health": {
            "type": "http",
            "url": f"http://127.0.0.1:{port}/health",
            "interval_secs": 2,
            "timeout_secs": 2,
            "startup_timeout_secs": 120,
        },
        "restart": {"policy": "always", "max_retries": 3, "backoff_initial_secs": 1, "stop_wait_secs": 5},
    }


def up(box: dict[str, Any], agents: dict[str, dict[str, Any]]) -> Any:
    from colo.supervise.orchestrator import Orchestrator

    sd: Path = box["sd"]
    orch = Orchestrator(small_config(sd, agents), state_dir=sd, fault_wait_secs=20.0)
    box["orch"] = orch
    orch.up()
    return orch


def states(orch: Any) -> dict[str, str]:
    return {s.name: s.state.value for s in orch.statuses()}


def test_drill3_always_exits_backoff_then_fatal(small: dict[str, Any]) -> None:
    sd: Path = small["sd"]
    agent = {
        "models": ["tiny"],
        "command": [sys.executable, str(sd / "agent.py"), "exit", "1"],
        "health": {"type": "none", "start_secs": 3},
        "restart": {"policy": "always", "max_retries": 3, "backoff_initial_secs": 0.5, "backoff_max_secs": 2},
    }
    t0 = time.monotonic()
    orch = up(small, {"crasher": agent})
    seen: set[str] = set()

    def fatal() -> bool:
        seen.add(orch.status("crasher").state.value)
        return orch.status("crasher").state.value == "FATAL"

    ok = bool(wait_for(fatal, timeout=60, step=0.1, tick=orch.tick))
    secs = time.monotonic() - t0
    st = colo_status(sd)
    row = next(a for a in st["agents"] if a["name"] == "crasher")
    ok = ok and "BACKOFF" in seen and row["state"] == "FATAL" and "crash loop" in (row["last_error"] or "")
    drill_result(
        3, "crash_loop_fatal", ok, secs, f"states seen {sorted(seen)}; colo status: {row['state']}: {row['last_error']}"
    )
    assert ok


def test_drill4_allocates_past_limit_oom_alone(small: dict[str, Any]) -> None:
    sd: Path = small["sd"]
    p_ok, p_hog = free_port(), free_port()
    hog = serve_agent(sd, p_hog, mode="hog")
    hog["restart"] = {"policy": "never", "stop_wait_secs": 5}
    t0 = time.monotonic()
    orch = up(small, {"steady": serve_agent(sd, p_ok), "hog": hog})

    def settled() -> bool:
        s = states(orch)
        return s.get("steady") == "RUNNING" and s.get("hog") in ("EXITED", "FATAL", "BACKOFF")

    wait_for(settled, timeout=120, step=0.3, tick=orch.tick)
    secs = time.monotonic() - t0
    served = 0
    for _ in range(5):  # a few more ticks, each followed by a health check: the steady agent keeps serving
        orch.tick()
        served += health_ok(p_ok)
    ooms = [e for e in orch.events() if e.kind.value == "out_of_memory"]
    s = states(orch)
    steady_pid = orch.status("steady").pid
    serving = served == 5
    ok = [e.agent for e in ooms][:1] == ["hog"] and all(e.agent == "hog" for e in ooms)
    ok = ok and s["hog"] == "EXITED" and s["steady"] == "RUNNING" and serving and orch.status("steady").restarts == 0
    tail = " | ".join((sd / "logs" / "hog.log").read_text(errors="replace").strip().splitlines()[-2:])
    drill_result(4, "oom_alone", ok, secs, f"states {s}; steady pid {steady_pid} serving={serving}; hog log: {tail}")
    assert ok, (s, ooms, tail)


def test_drill5_illegal_address_fault_recovery(small: dict[str, Any]) -> None:
    sd: Path = small["sd"]
    trigger = sd / "fault-now"
    ports = {"alpha": free_port(), "beta": free_port(), "faulter": free_port()}
    agents = {n: serve_agent(sd, p) for n, p in ports.items()}
    agents["faulter"] = serve_agent(sd, ports["faulter"], extra_env={"FAULT_TRIGGER": str(trigger)})
    orch = up(small, agents)
    up_ok = wait_for(lambda: all(v == "RUNNING" for v in states(orch).values()), 120, 0.3, orch.tick)
    if not up_ok:
        drill_result(5, "mps_fault_recovery", False, 0.0, f"agents did not come up: {states(orch)}")
        pytest.fail(f"agents did not come up: {states(orch)}")
    before = {n: orch.status(n).pid for n in ports}
    t0 = time.monotonic()
    trigger.touch()
    detected = wait_for(
        lambda: [e for e in orch.events() if e.kind.value == "mps_fault"], timeout=30, step=0.1, tick=orch.tick
    )
    t_detect = time.monotonic() - t0
    recovered = wait_for(lambda: orch.supervisor.recovered, timeout=150, step=0.2, tick=orch.tick)
    secs = time.monotonic() - t0
    s = states(orch)
    after = {n: orch.status(n).pid for n in ports}
    faulter_log = (sd / "logs" / "faulter.log").read_text(errors="replace")
    injected = "FAULT-INJECTION-FAILED" not in faulter_log and "launching an illegal-address kernel" in faulter_log
    detail = f"detected after {t_detect:.1f} s; states {s}"
    ok = bool(detected) and bool(recovered) and injected
    if recovered:
        rec = recovered[0]
        moved = all(after[n] != before[n] for n in ports)
        ok = ok and all(v == "RUNNING" for v in s.values()) and moved
        detail += (
            f"; recovery {rec.seconds:.1f} s (fault -> all RUNNING), culprit {rec.culprit},"
            f" daemon restarted {rec.daemon_restarted}; all relaunched: {moved}"
        )
    if detected:
        detail += f"; event: {detected[0].message}"
    if not injected:
        detail += "; fault injection: " + " | ".join(faulter_log.strip().splitlines()[-3:])
    drill_result(5, "mps_fault_recovery", ok, secs, detail)
    assert ok, detail
