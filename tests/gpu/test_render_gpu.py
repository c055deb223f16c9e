"""On a real GPU: the MPS environment colo *renders* (systemd drop-in, Kubernetes Deployment) works.

One MPS control daemon is started for GPU 0 under a private state dir in /tmp, exactly where the node agent
keeps it (``<state>/mps/<uuid>/pipe``), and ``colo node``'s index links are written
(``<state>/mps/by-index/<i> -> ../<uuid>``). Then a child CUDA client (``sys.executable``, torch) is run with

1. the ``Environment=`` lines of the rendered ``colo-agent-<name>.service.d/10-colo-mps.conf``, and
2. the ``env`` of the rendered Deployment (``NVIDIA_*`` variables are for the container runtime),

and must become a client of that daemon through the *index link* (an MPS server appears), see one device,
and be held to the planned limit: a small allocation succeeds, one larger than the limit fails.

Teardown always kills the children, quits the daemon and kills any nvidia-cuda-mps-* process left in the
private pipe dir. Nothing here changes a GPU setting. Each test prints ``GPU-RESULT render ...`` lines.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from mps_daemons import Clients, gpus_with_mps, running_daemon

from colo.gpu.mps.control import SubprocessMpsControl, scan_processes
from colo.gpu.mps.daemon import MpsDaemon, MpsDefaults
from colo.gpu.mps.root import MpsRoot
from colo.plan import inventory_slots, plan, require_complete
from colo.render.k8s import K8sOptions, render_k8s
from colo.render.node_agent import NodeAgentLayout, write_index_links
from colo.render.systemd import SystemdOptions, render_systemd
from colo.spec import load_config_text

pytestmark = pytest.mark.gpu

MIB = 1024**2
GIB = 1024**3

# colo.yaml for one node ("local") with one GPU: the agent's limit is 1 GiB + 50 % = 1.5 GiB = 1536M.
CONFIG = """\
version: 1
gpus: [{node: local, name: GPU, memory: 80GiB, count: 1}]
policy: {margin: "50%, at least 512MiB"}
models: {probe: {memory: 1GiB}}
agents:
  probe_agent: {models: [probe], port: 8000}
"""
LIMIT_BYTES = 1536 * MIB

PROBES = [256 * MIB, 2 * GIB]


def result_line(text: str) -> None:
    print(f"\nGPU-RESULT render {text}", flush=True)


@pytest.fixture(scope="module")
def daemon() -> Iterator[tuple[MpsDaemon, Any, Path]]:
    """GPU 0's daemon under a private state dir (started once for the module's rendered clients), index links
    written; always quit and checked at teardown. Yields (daemon, GPU, state dir)."""
    gpus = gpus_with_mps()
    gpu = gpus[0]
    sd = Path(tempfile.mkdtemp(prefix="colo-gpu-", dir="/tmp"))
    root = MpsRoot.under_state_dir(sd)
    try:
        with running_daemon(root, gpu.uuid, MpsDefaults()) as d:
            write_index_links(root.base_dir, [(g.index, g.uuid) for g in gpus])
            yield d, gpu, sd
    finally:
        shutil.rmtree(sd, ignore_errors=True)


def run_client(env_extra: dict[str, str], daemon: MpsDaemon) -> tuple[dict[str, Any], list[int]]:
    """Run the child with ``env_extra``; return its report and the daemon's server pids while it is alive."""
    clients = Clients()
    try:
        proc = clients.start(env_extra, PROBES)
        report = clients.report(proc)
        servers = daemon.server_pids()
        clients.release(proc)
        return report, servers
    finally:
        clients.close()


def _plan(state_dir: Path) -> tuple[Any, Any, NodeAgentLayout]:
    config = load_config_text(CONFIG, "colo.yaml")
    return config, require_complete(plan(config, inventory_slots(config))), NodeAgentLayout(state_dir=str(state_dir))


def _check(name: str, report: dict[str, Any], servers: list[int]) -> None:
    allocs = dict((n, r) for n, r in report["allocs"])
    result_line(
        f"{name}: devices={report['count']} free={report['free'] / GIB:.2f}GiB total={report['total'] / GIB:.1f}GiB "
        f"256MiB={allocs.get(256 * MIB)} 2GiB={allocs.get(2 * GIB)} mps_servers={servers}"
    )
    assert servers, "no MPS server: the client did not connect through the rendered pipe dir"
    assert report["count"] == 1
    assert report["free"] <= LIMIT_BYTES, "free memory above the rendered limit: the limit was not applied"
    assert allocs[256 * MIB] == "ok"
    assert allocs[2 * GIB] == "oom", f"2 GiB allocation under a 1536M limit gave {allocs[2 * GIB]!r}"


def test_rendered_systemd_dropin_env_limits_a_real_client(daemon: tuple[MpsDaemon, Any, Path]) -> None:
    d, gpu, state_dir = daemon
    config, p, layout = _plan(state_dir)
    files = render_systemd(config, p, options=SystemdOptions(layout=layout), agents=True)
    dropin = files["colo-agent-probe-agent.service.d/10-colo-mps.conf"]
    env = dict(m.groups() for m in re.finditer(r'^Environment="([A-Z_]+)=(.*)"$', dropin, re.MULTILINE))
    assert env["CUDA_MPS_PIPE_DIRECTORY"] == f"{state_dir}/mps/by-index/{gpu.index}/pipe"
    assert env["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"] == "0=1536M"
    report, servers = run_client(env, d)
    _check("systemd drop-in", report, servers)


def test_rendered_deployment_env_limits_a_real_client(daemon: tuple[MpsDaemon, Any, Path]) -> None:
    d, gpu, state_dir = daemon
    config, p, layout = _plan(state_dir)
    files = render_k8s(config, p, config_text=CONFIG, options=K8sOptions(layout=layout)).files
    deployment = next(
        o for o in yaml.safe_load_all(files["agents/probe-agent.yaml"]) if o and o["kind"] == "Deployment"
    )
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"] if not e["name"].startswith("NVIDIA_")}
    assert env["CUDA_MPS_PIPE_DIRECTORY"].endswith(f"/mps/by-index/{gpu.index}/pipe")
    report, servers = run_client(env, d)
    _check("k8s deployment env", report, servers)


def test_colo_node_no_agents_serves_a_rendered_client(state_dir: Path) -> None:
    """End to end on one host: `colo node CONFIG --node local --no-agents` (a child process) starts GPU 0's
    MPS daemon and the index links; a client with the rendered drop-in's environment is limited by it; on
    SIGTERM the node agent quits its daemon."""
    gpus = gpus_with_mps()
    cfg_path = state_dir / "colo.yaml"
    cfg_path.write_text(CONFIG)
    sd = state_dir / "s"
    argv = [sys.executable, "-c", "from colo.cli.entry import main; main()", "node", str(cfg_path)]
    argv += ["--node", "local", "--no-agents", "--no-api", "--state-dir", str(sd)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CUDA_MPS_")}
    log = (state_dir / "node.log").open("w")
    node = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    pipe = sd / "mps" / gpus[0].uuid / "pipe"
    daemon = MpsDaemon(MpsRoot.under_state_dir(sd).for_gpu(gpus[0].uuid), gpus[0].uuid, SubprocessMpsControl())
    try:
        control = sd / "mps" / "by-index" / str(gpus[0].index) / "pipe" / "control"
        deadline = 120.0
        waited = 0.0
        while not control.exists() and node.poll() is None and waited < deadline:
            select.select([], [], [], 0.5)
            waited += 0.5
        assert control.exists(), (
            f"no MPS control pipe via the index link: {(state_dir / 'node.log').read_text()[-2000:]}"
        )
        config, p, layout = _plan(sd)
        files = render_systemd(config, p, options=SystemdOptions(layout=layout), agents=True)
        dropin = files["colo-agent-probe-agent.service.d/10-colo-mps.conf"]
        client_env = dict(m.groups() for m in re.finditer(r'^Environment="([A-Z_]+)=(.*)"$', dropin, re.MULTILINE))
        report, servers = run_client(client_env, daemon)
        _check("colo node --no-agents + drop-in", report, servers)
    finally:
        if node.poll() is None:
            node.send_signal(signal.SIGTERM)
            try:
                node.wait(timeout=90)
            except subprocess.TimeoutExpired:
                node.kill()
                node.wait(timeout=30)
        log.close()
        left = []
        for proc in scan_processes(pipe):
            left.append(f"{proc.kind} {proc.pid}")
            with contextlib.suppress(OSError):
                os.kill(proc.pid, signal.SIGKILL)
        result_line(f"colo node exit={node.returncode} left={left}")
    assert node.returncode == 0, (state_dir / "node.log").read_text()[-2000:]
    assert not left, f"the node agent left MPS processes behind: {left}"
