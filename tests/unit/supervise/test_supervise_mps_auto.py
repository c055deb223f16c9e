"""policy.mps: auto at run time, with fake MPS, fake processes and a fake clock: daemons only on GPUs with
2+ agents, agents of a GPU without MPS get no MPS client environment, an apply that places a second agent on
a GPU switches it to MPS (daemon first, then a rolling restart of its agents) and back, and MPS recovery
leaves GPUs without MPS alone."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_supervise_orchestrator import World, agent, config, uuid

from colo.errors import MpsError
from colo.gpu.mps.env import PINNED_DEVICE_MEM_LIMIT, PIPE_DIRECTORY, VISIBLE_DEVICES
from colo.modelserver.exit_codes import EXIT_CONTEXT_LOST
from colo.spec.config import ColoConfig
from colo.supervise.fleet import NodeFleet
from colo.supervise.orchestrator import Orchestrator
from colo.supervise.snapshots import EventKind
from colo.supervise.state import AgentState

S = AgentState


def one_agent_per_gpu() -> ColoConfig:
    """``policy.mps: auto``, agent a on GPU 0 and c on GPU 1 (no GPU needs MPS)."""
    return config(agent("a", gpu=0), agent("c", gpu=1), mps="auto")


def two_agents_on_gpu0() -> ColoConfig:
    """``policy.mps: auto``, agents a and b on GPU 0 (it needs MPS) and c on GPU 1."""
    return config(agent("a", gpu=0), agent("b", gpu=0), agent("c", gpu=1), mps="auto")


def env_of(w: World, name: str) -> dict[str, str]:
    return w.runner.running(f"bin-{name}").spec.env_dict()


def daemons(w: World) -> set[str]:
    """GPU UUIDs with a live fake daemon."""
    return {Path(d.pipe_dir).parent.name for d in w.mps.daemons.values() if d.alive}


def mps_events(orch: Orchestrator) -> list[str]:
    return [e.message for e in orch.events(0, 1000) if e.kind == EventKind.MPS_MODE]


def test_up_starts_daemons_only_where_two_agents_share_a_gpu(tmp_path: Path) -> None:
    w = World(tmp_path)
    orch = w.orchestrator(two_agents_on_gpu0())
    result = orch.up()
    w.run(orch, 2)
    assert result.daemons_started == [uuid(0)] and result.mps
    assert daemons(w) == {uuid(0)}
    for name in ("a", "b"):
        env = env_of(w, name)
        assert PIPE_DIRECTORY in env and env[PINNED_DEVICE_MEM_LIMIT].endswith("M")
    c = env_of(w, "c")
    assert c[VISIBLE_DEVICES] == uuid(1)
    assert not any(k.startswith("CUDA_MPS_") for k in c)  # no MPS client environment at all
    events = mps_events(orch)
    assert "gpu0: 2 agents — MPS on (auto): agents share the GPU under their MPS limits" in events
    assert any(m.startswith("gpu1: 1 agent — MPS off (auto): a lone process") for m in events)
    gpus = {g.gpu.label: g.mps for g in orch.snapshot().plan.gpus}
    assert gpus == {"gpu0": True, "gpu1": False}
    orch.down()
    assert daemons(w) == set()


def test_a_lone_agent_runs_without_any_daemon(tmp_path: Path) -> None:
    w = World(tmp_path, gpus=1)
    orch = w.orchestrator(config(agent("a"), mps="auto"))
    result = orch.up()
    w.run(orch, 2)
    assert result.daemons_started == [] and not result.mps and daemons(w) == set()
    assert orch.status("a").state == S.RUNNING and PIPE_DIRECTORY not in env_of(w, "a")
    orch.down()


def test_no_mps_is_off_for_the_run_whatever_the_policy(tmp_path: Path) -> None:
    w = World(tmp_path)
    orch = w.orchestrator(config(agent("a", gpu=0), agent("b", gpu=0), mps="on"), use_mps=False)
    orch.up()
    w.run(orch, 2)
    assert daemons(w) == set() and PIPE_DIRECTORY not in env_of(w, "a")
    (g0, _) = orch.snapshot().plan.gpus
    assert not g0.mps and "(--no-mps)" in g0.mps_reason
    orch.down()


def test_apply_placing_a_second_agent_switches_the_gpu_to_mps_and_back(tmp_path: Path) -> None:
    w = World(tmp_path)
    orch = w.started(one_agent_per_gpu())
    assert daemons(w) == set() and orch.store.get_meta("orchestrator")["mps_gpus"] == []
    pids = {n: w.pid(orch, n) for n in ("a", "c")}

    # a second agent on gpu0: its daemon starts first, then a restarts as an MPS client; c is untouched
    result = orch.apply(two_agents_on_gpu0())
    assert result.started == ["b"] and result.restarted == ["a"] and result.unchanged == ["c"]
    assert daemons(w) == {uuid(0)}
    assert uuid(0) in NodeFleet.from_record(orch.paths.root, None, orch.store).recorded()
    assert orch.store.get_meta("orchestrator")["mps_gpus"] == ["gpu0"]  # what `colo status` says
    w.run(orch, 6)
    assert w.pid(orch, "a") != pids["a"] and w.pid(orch, "c") == pids["c"]
    assert PIPE_DIRECTORY in env_of(w, "a") and PIPE_DIRECTORY in env_of(w, "b")
    assert PIPE_DIRECTORY not in env_of(w, "c")
    assert any(m.startswith("gpu0: switches to MPS: 2 agents — MPS on (auto)") for m in mps_events(orch))
    restarted = [e.message for e in orch.events(0, 1000) if e.agent == "a" and e.kind == EventKind.RESTARTED]
    assert restarted and "MPS on" in restarted[-1]
    assert {n: orch.status(n).state for n in "abc"} == {"a": S.RUNNING, "b": S.RUNNING, "c": S.RUNNING}

    # back to one agent: a restarts time-sliced, then the daemon colo started quits
    pids = {n: w.pid(orch, n) for n in ("a", "c")}
    result = orch.apply(one_agent_per_gpu())
    assert result.stopped == ["b"] and result.restarted == ["a"]
    assert daemons(w) == {uuid(0)}  # not before a restarted out of it
    w.run(orch, 6)
    assert daemons(w) == set()
    assert w.pid(orch, "a") != pids["a"] and w.pid(orch, "c") == pids["c"]
    assert PIPE_DIRECTORY not in env_of(w, "a") and orch.status("a").state == S.RUNNING
    assert any(m.startswith("gpu0: switches to time-slicing: 1 agent — MPS off (auto)") for m in mps_events(orch))
    assert any(
        e.kind == EventKind.DAEMON and "stopped the MPS daemon" in e.message and "time-sliced" in e.message
        for e in orch.events(0, 1000)
    )
    assert NodeFleet.from_record(orch.paths.root, None, orch.store).recorded() == []
    assert not orch.supervisor.recovered  # the daemon's exit was no fault
    orch.down()


def test_switch_that_cannot_start_its_daemon_changes_nothing(tmp_path: Path) -> None:
    w = World(tmp_path)
    orch = w.started(one_agent_per_gpu())
    pid = w.pid(orch, "a")
    w.mps.fail_start = "boom"
    with pytest.raises(MpsError):
        orch.apply(two_agents_on_gpu0())
    w.run(orch, 3)
    assert daemons(w) == set() and w.pid(orch, "a") == pid
    assert set(orch.snapshot().plan.agents[i].name for i in range(2)) == {"a", "c"}
    orch.down()


def test_recovery_ignores_a_gpu_without_mps(tmp_path: Path) -> None:
    w = World(tmp_path)
    orch = w.started(two_agents_on_gpu0())
    pids = {n: w.pid(orch, n) for n in "abc"}
    # c (no MPS) loses its context, and its log speaks of MPS: only c restarts, by its own policy
    with open(w.state / "logs" / "c.log", "a") as fh:
        fh.write("RuntimeError: CUDA_ERROR_MPS_RPC_FAILURE\n")
    w.runner.exit(pids["c"], code=EXIT_CONTEXT_LOST)
    w.run(orch, 4)
    sup = orch.supervisor
    assert sup is not None and not sup.recoveries.active and not orch.supervisor.recovered
    assert not [e for e in orch.events(0, 1000) if e.kind == EventKind.MPS_FAULT]
    assert w.pid(orch, "a") == pids["a"] and w.pid(orch, "b") == pids["b"]
    assert orch.status("c").state == S.RUNNING and w.pid(orch, "c") != pids["c"]
    assert [m for _, m in w.mps.sent if m.startswith("terminate_client")] == []
    orch.down()


def test_mps_allocation_route_says_which_gpus_run_mps_and_why(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from colo.api.app import create_app
    from colo.api.context import ApiOptions

    w = World(tmp_path)
    orch = w.started(one_agent_per_gpu())
    client = TestClient(create_app(orch, token="t", options=ApiOptions(read_ttl_secs=0.0)))
    doc = client.get("/mps/allocation").json()
    assert doc["colo"]["mps_gpus"] == []
    assert [(g["index"], g["mps"], g["mps_mode"]) for g in doc["colo"]["gpus"]] == [(0, False, "auto"), (1, False, "auto")]
    assert "MPS off (auto)" in doc["colo"]["gpus"][0]["mps_reason"]
    rows = doc["mps_resource_allocation"]["agent_allocations"]
    assert rows["a"]["colo"]["memory_enforcement"] == "none"  # a command agent without MPS: nothing holds it
    assert rows["a"]["mps_memory_limit_gb"] == 1.5  # the seed's keys as before
    orch.apply(two_agents_on_gpu0())
    doc = client.get("/mps/allocation").json()
    assert doc["colo"]["mps_gpus"] == ["local:0"]
    assert doc["colo"]["gpus"][0]["mps_reason"].startswith("2 agents — MPS on (auto)")
    assert doc["mps_resource_allocation"]["agent_allocations"]["a"]["colo"]["memory_enforcement"] == "mps-pinned"
    orch.down()


def test_launch_env_caps_the_builtin_agent_without_mps(tmp_path: Path) -> None:
    from colo.modelserver.command import MEMORY_CAP_VAR
    from colo.plan import inventory_slots, plan
    from colo.spec import load_config_text
    from colo.supervise.agent_setup import agent_setup
    from colo.supervise.planning import MpsRoot

    text = (
        "gpus: [{memory: 24GiB, count: 2}]\nmodels: {m: {memory: 1GiB}}\nagents:\n"
        "  a: {models: [m], gpu: 0}\n  b: {models: [m], gpu: 0}\n  lone: {models: [m], gpu: 1}\n"
        "  cmd: {models: [m], gpu: 1, command: [bin-cmd]}\n  solo: {models: [m], gpu: 2}\n"
    ).replace("count: 2", "count: 3")
    c = load_config_text(text, "c.yaml")
    slots = [s.__class__(s.node, s.index, s.name, s.memory_total_bytes, uuid=f"GPU-{s.index}") for s in inventory_slots(c)]
    p = plan(c, slots)
    root = MpsRoot.under_state_dir(tmp_path)
    envs = {ap.name: agent_setup(c, ap, config_copy=tmp_path / "c.yaml", mps_root=root).launch.env_dict() for ap in p.placed}
    assert PIPE_DIRECTORY in envs["a"] and MEMORY_CAP_VAR not in envs["a"]  # MPS holds it
    assert PIPE_DIRECTORY in envs["lone"] and PIPE_DIRECTORY in envs["cmd"]  # gpu1 has two agents
    assert PIPE_DIRECTORY not in envs["solo"] and envs["solo"][MEMORY_CAP_VAR] == str(p.agent("solo").limit_bytes)
    assert envs["solo"][VISIBLE_DEVICES] == "GPU-2"


def test_restart_under_auto_rolls_a_lone_agent_out_of_the_old_daemon_then_quits_it(tmp_path: Path) -> None:
    """An orchestrator that ran a lone agent under MPS (policy.mps: on) is replaced by one under auto: the
    adopted agent restarts time-sliced, then the daemon the first one started quits."""
    w = World(tmp_path, gpus=1)
    first = w.orchestrator(config(agent("a"), mps="on"))
    first.up()
    w.run(first, 2)
    pid = w.pid(first, "a")
    assert daemons(w) == {uuid(0)}
    first._lock_file.release()  # what SIGKILL does to the lock; the agent and the daemon keep running
    second = w.orchestrator(config(agent("a"), mps="auto"))
    second.up()
    w.run(second, 6)
    assert w.pid(second, "a") != pid and PIPE_DIRECTORY not in env_of(w, "a")
    assert daemons(w) == set() and NodeFleet.from_record(second.paths.root, None, second.store).recorded() == []
    second.down()
