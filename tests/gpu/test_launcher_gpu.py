"""A bert-tiny agent (``analyst`` of examples/newsroom/colo.sized.yaml) under a real MPS daemon, spawned and
forked from the pre-imported launcher, with the launch spec and MPS client environment colo builds: the fork
path must be taken on a GPU machine (the launcher's CUDA driver mapped but not initialised), and the forked
agent must report its start phases.

The launcher imports (torch, transformers, the HTTP stack) while the spawned agent starts, so the whole test
takes about one spawn plus a few seconds. Fork runs: the first pays the config's model classes in the launcher
(once per config version), the second gets its model prebuilt by the launcher. Prints::

    GPU-RESULT launcher agent=bert-tiny spawn_s=... fork_first_s=... fork_s=... phases=fork:0.01,... \
        spawn_phases=spawn:...,... driver="libcuda mapped, not initialised (...)" libcuda_mapped_by=torch

It fails when the agent does not start, or the launcher refused to fork (the blocker is in the message, with
the launcher's log). The timing targets are reported, not asserted. tests/gpu/launcher_timing.py is the
benchmark (more runs, the nine newsroom agents at once).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from launcher_timing import NEWSROOM, ROOT, launch_specs, phases_text, time_to_healthy
from mps_daemons import running_daemon

from colo.launch.fork_runner import ForkRunner
from colo.launch.runner import ProcessRunner

pytestmark = pytest.mark.gpu

#: One agent start, spawned or forked, never takes longer than this here (a spawn was ~12 s on the H100).
HEALTHY_WITHIN_SECS = 60.0


def test_launcher_forks_bert_tiny_under_mps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from colo.gpu.mps.root import MpsRoot
    from colo.gpu.nvml import NvmlBackend

    gpus = NvmlBackend().gpus()
    if not gpus:
        pytest.skip("NVML sees no GPU")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH")) if p))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    short = Path(tempfile.mkdtemp(prefix="cl", dir="/tmp"))  # short: MPS socket paths
    root = MpsRoot.under_state_dir(short)
    fork_logs = tmp_path / "fork"
    forker = ForkRunner()
    try:
        with running_daemon(root, gpus[0].uuid):
            alone = launch_specs(NEWSROOM, ["analyst"], mps=(root, gpus[0].uuid))
            forker.start(fork_logs)  # the launcher imports while the spawned agent starts
            spawn_starts: dict[str, dict[str, Any]] = {}
            spawned = time_to_healthy(
                ProcessRunner(), alone, tmp_path / "spawn", within_secs=HEALTHY_WITHIN_SECS, starts=spawn_starts
            )
            launcher_log = fork_logs / "forkserver.log"
            assert forker.wait_ready(HEALTHY_WITHIN_SECS), launcher_log.read_text(errors="replace")[-3000:]
            info = forker.ready_info()
            assert info.get("blocker") is None, f"{info}\n{launcher_log.read_text(errors='replace')[-3000:]}"
            first = time_to_healthy(forker, alone, fork_logs, within_secs=HEALTHY_WITHIN_SECS)
            starts: dict[str, dict[str, Any]] = {}
            forked = time_to_healthy(forker, alone, fork_logs, within_secs=HEALTHY_WITHIN_SECS, starts=starts)
            assert forker.forks == 2 and forker.fallbacks == [], forker.fallbacks
            assert starts["analyst"].get("launched_by") == "fork", starts
            assert spawn_starts["analyst"].get("launched_by") == "spawn", spawn_starts
            agent_log = (fork_logs / "analyst.log").read_text(errors="replace")
            prebuilt = "prebuilt by the launcher" in agent_log
            print(
                f"GPU-RESULT launcher agent=bert-tiny spawn_s={spawned['analyst']:.2f} "
                f"fork_first_s={first['analyst']:.2f} fork_s={forked['analyst']:.2f} "
                f"phases={phases_text(starts['analyst'])} spawn_phases={phases_text(spawn_starts['analyst'])} "
                f'prebuilt={prebuilt} driver="{info.get("driver")}" libcuda_mapped_by={info.get("libcuda_mapped_by")} '
                f"launcher_imports={info.get('import_secs')}",
                flush=True,
            )
            for line in launcher_log.read_text(errors="replace").splitlines():
                if line.startswith(("launcher ", "prebuilt ", "not prebuilding ", "preloaded ")):
                    print(f"GPU-RESULT launcher log: {line}", flush=True)
    finally:
        forker.close()
        shutil.rmtree(short, ignore_errors=True)


def test_node_launcher_forks_bert_tiny_under_mps_and_holds_no_gpu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The node launcher (``colo launcher serve``'s process) on a GPU machine: a runner forks bert-tiny from a
    session of it under a real MPS daemon, and neither the launcher nor its session ever holds a GPU context
    (NVML lists no process of theirs, before and after the agent ran). Prints ``GPU-RESULT node-launcher``."""
    import subprocess

    from colo.gpu.mps.root import MpsRoot
    from colo.gpu.nvml import NvmlBackend
    from colo.launch.node_launcher import command_line, connect
    from colo.launch.prestart import launcher_env
    from testkit import wait_for

    backend = NvmlBackend()
    gpus = backend.gpus()
    if not gpus:
        pytest.skip("NVML sees no GPU")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH")) if p))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    short = Path(tempfile.mkdtemp(prefix="cl", dir="/tmp"))
    sock = short / "run" / "launcher.sock"
    root = MpsRoot.under_state_dir(short)
    with open(tmp_path / "node.log", "ab") as out:
        node = subprocess.Popen(
            command_line(sock, models_of=NEWSROOM),
            env=launcher_env(),
            stdout=out,
            stderr=out,
            start_new_session=True,
        )
    forker = ForkRunner(node_socket=sock)
    try:

        def answers() -> bool:
            session = connect(sock)
            if session is not None:
                session.close()
            return session is not None or node.poll() is not None

        assert wait_for(answers, timeout=HEALTHY_WITHIN_SECS, step=0.2) and node.poll() is None, (
            tmp_path / "node.log"
        ).read_text(errors="replace")[-3000:]
        with running_daemon(root, gpus[0].uuid):
            alone = launch_specs(NEWSROOM, ["analyst"], mps=(root, gpus[0].uuid))
            forker.start(tmp_path / "fork")
            assert forker.node is not None and forker.node.pid == node.pid, (tmp_path / "node.log").read_text()[-3000:]
            starts: dict[str, dict[str, Any]] = {}
            forked = time_to_healthy(forker, alone, tmp_path / "fork", within_secs=HEALTHY_WITHIN_SECS, starts=starts)
            assert forker.forks == 1 and forker.fallbacks == [], forker.fallbacks
            assert starts["analyst"].get("launched_by") == "fork", starts
            session_pid = forker.ready_info().get("pid")
            on_gpu = {p.pid for p in backend.processes()}
        forker.close()
        assert node.pid not in on_gpu and session_pid not in on_gpu, on_gpu
        assert node.poll() is None  # the runner's end is its session's, not the launcher's
        print(
            f"GPU-RESULT node-launcher agent=bert-tiny fork_s={forked['analyst']:.2f} "
            f"phases={phases_text(starts['analyst'])} node_imports={forker.node.import_secs} "
            f"launcher_on_gpu={node.pid in on_gpu}",
            flush=True,
        )
    finally:
        forker.close()
        if node.poll() is None:
            node.terminate()
            node.wait(15)
        backend.close()
        shutil.rmtree(short, ignore_errors=True)
