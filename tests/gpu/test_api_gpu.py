"""On a real GPU: ``/gpu/info`` and ``/metrics`` reflect a real MPS daemon and a real client.

Starts one MPS control daemon (the GPU tests' ``running_daemon``, private pipe dir under /tmp), one child python that
allocates 512 MiB with torch under ``client_env`` (so it is an MPS client of that daemon), serves the API
over the read-only source of ``colo serve`` (real NVML, the same MPS root) in a uvicorn thread, then checks
what the routes say. Always stops the child, the server and the daemon.

Prints ``GPU-RESULT api ...`` lines.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mps_daemons import running_daemon

pytestmark = pytest.mark.gpu

ALLOC_MIB = 512
CHILD = f"""
import sys, time
import torch
x = torch.empty({ALLOC_MIB} * 1024 * 1024, dtype=torch.uint8, device="cuda")
x.fill_(1)
torch.cuda.synchronize()
print("READY", flush=True)
sys.stdin.read()  # until the test closes stdin
"""

CONFIG = """
gpus: auto
models:
  probe-model: {memory: 2GiB}
agents:
  probe: {models: [probe-model]}
"""

TOKEN = "gpu-test-token-0123456789abcdef"


def _need_gpu() -> None:
    from colo.gpu.mps.control import find_binary

    if find_binary() is None:
        pytest.skip("nvidia-cuda-mps-control is not installed")


def _read_lines(stream: object, out: queue.Queue[str]) -> None:
    for line in iter(stream.readline, ""):  # type: ignore[attr-defined]
        out.put(line)


@pytest.fixture
def mps_world() -> Iterator[dict[str, object]]:
    """A running daemon under a private root, a child MPS client holding memory; torn down always."""
    _need_gpu()
    from colo.gpu.mps.env import client_env
    from colo.gpu.mps.root import MpsRoot
    from colo.gpu.nvml import NvmlBackend
    from colo.spec import load_config_text
    from colo.supervise.planning import plan_node

    gpus = NvmlBackend().gpus()
    if not gpus:
        pytest.skip("NVML sees no GPU")
    uuid = gpus[0].uuid
    root = Path(tempfile.mkdtemp(prefix="colo-apigpu-", dir="/tmp"))
    cfg_path = root / "colo.yaml"
    cfg_path.write_text(CONFIG)
    child: subprocess.Popen[str] | None = None
    daemons = contextlib.ExitStack()
    try:
        daemon = daemons.enter_context(running_daemon(MpsRoot(root / "mps"), uuid))
        config = load_config_text(CONFIG, source=str(cfg_path))
        agent = plan_node(config, gpus[:1]).plan.agent("probe")
        env = {**os.environ, **client_env(agent, daemon.paths, gpu_uuid=uuid)}
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=_read_lines, args=(child.stdout, lines), daemon=True).start()
        deadline = time.monotonic() + 240
        seen: list[str] = []
        while True:
            try:
                line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"the MPS client child did not get ready in 240 s: {''.join(seen)[-2000:]}")
            seen.append(line)
            if line.strip() == "READY":
                break
            if child.poll() is not None and lines.empty():
                pytest.fail(f"the MPS client child exited {child.returncode}: {''.join(seen)[-2000:]}")
        yield {"uuid": uuid, "root": root, "config": cfg_path, "child": child, "pipe_dir": daemon.paths.pipe_dir}
    finally:
        if child is not None:
            try:
                if child.stdin:
                    child.stdin.close()
                child.wait(30)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait(10)
        try:
            daemons.close()
        finally:
            shutil.rmtree(root, ignore_errors=True)


def test_gpu_info_and_metrics_show_the_real_daemon_and_client(mps_world: dict[str, object]) -> None:
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    from colo.api.app import create_app
    from colo.api.readonly import ReadOnlySource, load_read_only
    from colo.api.server import ApiThread
    from colo.supervise.state import AgentState

    uuid = str(mps_world["uuid"])
    child = mps_world["child"]
    assert isinstance(child, subprocess.Popen)
    base = load_read_only(Path(str(mps_world["config"])), mps_root=Path(str(mps_world["root"])) / "mps")
    assert isinstance(base, ReadOnlySource)

    class ChildIsProbe(ReadOnlySource):
        """The read-only source, with the child standing in as the running 'probe' agent (for the join)."""

        def statuses(self):  # type: ignore[no-untyped-def]
            return [
                dataclasses.replace(s, pid=child.pid, state=AgentState.RUNNING) if s.name == "probe" else s
                for s in super().statuses()
            ]

    source = ChildIsProbe(base.config, base.plan, base.backend, fleet=base.fleet, poll_secs=0.5)
    server = ApiThread(create_app(source, token=TOKEN), port=0).start()
    try:
        url = f"http://127.0.0.1:{server.port}"
        with httpx.Client(base_url=url, timeout=30) as http:
            deadline = time.monotonic() + 60
            while True:
                info = http.get("/gpu/info").json()
                gpu = next(g for g in info["gpus"] if g["uuid"] == uuid)
                daemon = gpu["mps"] or {}
                clients = [c["pid"] for s in daemon.get("servers", []) for c in s["clients"]]
                if child.pid in clients or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            proc = next((p for p in gpu["processes"] if p["pid"] == child.pid), None)
            servers = [(s["pid"], s["status"], [c["pid"] for c in s["clients"]]) for s in daemon.get("servers", [])]
            print(
                f"GPU-RESULT api gpu_info mps_enabled={info['mps_enabled']} "
                f"control_process={info['mps']['control_process']} pipe_dir={info['mps']['pipe_dir']} "
                f"daemon_running={daemon.get('running')} healthy={daemon.get('healthy')} servers={servers} "
                f"child_pid={child.pid} child_in_clients={child.pid in clients} "
                f"child_nvml_mib={(proc['used_memory_bytes'] or 0) // 2**20 if proc else None} "
                f"child_agent={proc['agent'] if proc else None} "
                f"child_mps_limit_mib={(proc.get('mps_limit_bytes') or 0) // 2**20 if proc else None} gpu_used_mib={gpu['memory_used_bytes'] // 2**20} "
                f"processes={[(p['pid'], p['is_mps_client'], p['agent']) for p in gpu['processes']]}"
            )
            assert info["mps_enabled"] is True
            assert info["mps"]["enabled"] is True
            assert info["mps"]["control_process"] is True
            assert info["mps"]["pipe_dir"] == str(mps_world["pipe_dir"])
            assert daemon["running"] is True and daemon["healthy"] is True
            assert any(status == "ACTIVE" for _, status, _ in servers)
            assert child.pid in clients
            assert gpu["memory_used_bytes"] >= ALLOC_MIB * 2**20
            if proc is not None:  # NVML pids match ours unless a PID namespace hides them
                assert proc["used_memory_bytes"] is None or proc["used_memory_bytes"] >= ALLOC_MIB * 2**20
                assert proc["agent"] == "probe"

            metrics = http.get("/metrics").text
            samples: dict[str, list[tuple[dict[str, str], float]]] = {}
            for fam in text_string_to_metric_families(metrics):
                for s in fam.samples:
                    samples.setdefault(s.name, []).append((s.labels, s.value))
            used = [v for lab, v in samples["colo_gpu_memory_used_bytes"] if lab["uuid"] == uuid]
            up = [v for lab, v in samples.get("colo_mps_daemon_up", []) if lab["uuid"] == uuid]
            nclients = [v for lab, v in samples.get("colo_mps_clients", []) if lab["uuid"] == uuid]
            child_mem = [
                v for lab, v in samples.get("colo_gpu_process_memory_used_bytes", []) if lab["pid"] == str(child.pid)
            ]
            print(
                f"GPU-RESULT api metrics colo_gpu_memory_used_bytes={used} colo_mps_daemon_up={up} "
                f"colo_mps_clients={nclients} child_process_bytes={child_mem} "
                f"temperature_c={[v for lab, v in samples.get('colo_gpu_temperature_celsius', [])]} "
                f"power_w={[v for lab, v in samples.get('colo_gpu_power_watts', [])]}"
            )
            assert used and used[0] >= ALLOC_MIB * 2**20
            assert up == [1.0]
            assert nclients and nclients[0] >= 1
            assert samples["colo_mps_enabled"][0][1] == 1.0

            for route in ("/gpu/info", "/mps/allocation"):  # latency figures: benchmarks/api_load.py
                assert http.get(route).status_code == 200
    finally:
        server.stop()
