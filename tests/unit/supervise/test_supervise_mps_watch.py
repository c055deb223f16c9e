"""Watching MPS per GPU (issue 12) on CPU: every trigger of the one recovery path, with fake MPS, fake processes
and a fake clock. Each: the GPU whose MPS failed recovers, the other GPU's agent keeps its pid, detection
within one tick (0.5 s)."""

from __future__ import annotations

from pathlib import Path

from test_supervise_orchestrator import World, agent, config, uuid

from colo.modelserver.exit_codes import EXIT_CONTEXT_LOST
from colo.supervise.orchestrator import TICK_SECS, Orchestrator
from colo.supervise.recovery.mps_recovery import RecoveryTrigger
from colo.supervise.snapshots import EventKind
from colo.supervise.state import AgentState

S = AgentState


def two_gpus(tmp_path: Path) -> tuple[World, Orchestrator, Path, dict[str, int]]:
    """Agents a, b on GPU 0 and c on GPU 1, all MPS clients, their servers seen in a reading."""
    w = World(tmp_path)
    orch = w.orchestrator(config(agent("a", gpu=0), agent("b", gpu=0), agent("c", gpu=1)))
    orch.up()
    w.run(orch, 2)
    pipe0 = w.state / "mps" / uuid(0) / "pipe"
    for name in ("a", "b"):
        w.mps.connect_client(pipe0, w.pid(orch, name))
    w.mps.connect_client(w.state / "mps" / uuid(1) / "pipe", w.pid(orch, "c"))
    w.run(orch, 1.5)  # a GPU reading lists the new servers: watched from now on
    return w, orch, pipe0, {n: w.pid(orch, n) for n in ("a", "b", "c")}


def one_tick(w: World, orch: Orchestrator) -> None:
    w.clock.advance(TICK_SECS)
    orch.tick()


def gpu0_recovered(w: World, orch: Orchestrator, pids: dict[str, int], trigger: RecoveryTrigger) -> None:
    (rec,) = orch.supervisor.recovered
    assert rec.trigger == trigger and rec.gpu_uuid == uuid(0) and rec.agents == ("a", "b")
    assert {n: orch.status(n).state for n in pids} == {"a": S.RUNNING, "b": S.RUNNING, "c": S.RUNNING}
    assert w.pid(orch, "a") != pids["a"] and w.pid(orch, "b") != pids["b"]
    assert w.pid(orch, "c") == pids["c"]  # the other GPU is not touched
    (summary,) = orch.snapshot().recoveries
    assert summary.trigger == trigger.value and summary.ok and summary.recover_secs == rec.seconds


def test_server_death_is_seen_within_a_tick_and_recovers_that_gpu_only(tmp_path: Path) -> None:
    w, orch, pipe0, pids = two_gpus(tmp_path)
    server = w.mps.kill_server(pipe0)
    one_tick(w, orch)
    rec = orch.supervisor.recoveries.get(uuid(0)) if orch.supervisor else None
    assert rec is not None and rec.trigger == RecoveryTrigger.SERVER_DIED
    assert rec.detect_secs is not None and rec.detect_secs <= TICK_SECS
    assert orch.status("a").state != S.RUNNING and orch.status("b").state != S.RUNNING
    (event,) = [e for e in orch.events() if e.kind == EventKind.MPS_FAULT]
    assert f"MPS server {server} is gone" in event.message and "[server_died]" in event.message
    sent = [cmd for _, cmd in w.mps.sent if cmd.startswith("terminate_client")]
    assert sent == []  # no server to ask
    w.run(orch, 4)
    gpu0_recovered(w, orch, pids, RecoveryTrigger.SERVER_DIED)
    assert not orch.supervisor.recovered[0].daemon_restarted  # the daemon lived: it starts a new server itself
    assert f'colo_mps_recoveries_total{{trigger="server_died",uuid="{uuid(0)}"}} 1.0' in metrics_text(orch)
    assert "colo_mps_recovery_detect_seconds{" in metrics_text(orch)
    orch.down()


def metrics_text(orch: Orchestrator) -> str:
    from prometheus_client import generate_latest

    from colo.api.metrics import MetricsInput, registry_for

    snap = orch.snapshot()
    read = lambda: MetricsInput(snap.agents, snap.plan, snap.gpu, snap.recoveries)  # noqa: E731
    return generate_latest(registry_for(read)).decode()


def test_daemon_death_restores_the_daemon_at_once_and_relaunches_that_gpu(tmp_path: Path) -> None:
    w, orch, pipe0, pids = two_gpus(tmp_path)
    old_server = next(iter(w.mps.daemon_at(pipe0).servers))
    old = w.mps.kill_daemon(pipe0)
    assert w.mps.alive(old_server)  # a killed daemon's server lives on
    one_tick(w, orch)
    rec = orch.supervisor.recoveries.get(uuid(0)) if orch.supervisor else None
    assert rec is not None and rec.trigger == RecoveryTrigger.DAEMON_DIED
    assert rec.detect_secs is not None and rec.detect_secs <= TICK_SECS
    w.run(orch, 4)
    gpu0_recovered(w, orch, pids, RecoveryTrigger.DAEMON_DIED)
    assert orch.supervisor.recovered[0].daemon_restarted
    new = w.mps.daemon_at(pipe0)
    assert new.alive and new.pid != old
    assert not w.mps.alive(old_server)  # what was left of the old daemon was stopped
    assert any(e.kind == EventKind.DAEMON and "restarted the MPS daemon" in e.message for e in orch.events())
    orch.down()


def test_server_fault_is_seen_within_a_second(tmp_path: Path) -> None:
    w, orch, pipe0, _pids = two_gpus(tmp_path)
    w.mps.fault(pipe0)
    for _ in range(2):  # one GPU reading a second, looked at in the tick that takes it
        one_tick(w, orch)
    rec = orch.supervisor.recoveries.get(uuid(0)) if orch.supervisor else None
    assert rec is not None and rec.trigger == RecoveryTrigger.SERVER_FAULT
    assert rec.detect_secs is not None and rec.detect_secs <= 1.0  # since the last reading without FAULT
    assert orch.status("c").state == S.RUNNING
    orch.down()


def test_context_lost_on_a_healthy_gpu_restarts_only_that_agent_at_once(tmp_path: Path) -> None:
    w, orch, _, pids = two_gpus(tmp_path)
    w.runner.exit(pids["a"], code=EXIT_CONTEXT_LOST)
    one_tick(w, orch)
    a = orch.status("a")
    assert a.state == S.STARTING and a.pid not in (None, pids["a"]) and a.restarts == 1  # no backoff wait
    assert "CUDA context lost" in (a.last_error or "")
    assert not orch.supervisor or uuid(0) not in orch.supervisor.recoveries
    assert w.pid(orch, "b") == pids["b"] and w.pid(orch, "c") == pids["c"]
    assert any("only this agent restarts" in e.message for e in orch.events() if e.agent == "a")
    w.run(orch, 2)
    assert orch.status("a").state == S.RUNNING and not orch.supervisor.recovered
    sup = orch.supervisor
    assert sup is not None and sup.agents["a"].failures == 0  # not the agent's fault
    orch.down()


def test_context_lost_while_the_gpus_mps_is_unhealthy_recovers_the_gpu(tmp_path: Path) -> None:
    w, orch, pipe0, pids = two_gpus(tmp_path)
    w.mps.hang(pipe0)  # the daemon lives but answers nothing: clients' RPCs fail
    w.runner.exit(pids["a"], code=EXIT_CONTEXT_LOST)
    one_tick(w, orch)
    rec = orch.supervisor.recoveries.get(uuid(0)) if orch.supervisor else None
    assert rec is not None and rec.trigger == RecoveryTrigger.CLIENT_RPC_FAILURE
    assert orch.status("b").state != S.RUNNING and orch.status("c").state == S.RUNNING
    w.run(orch, 14)  # WAITING: the hung daemon never says ready; restarted after fault_wait_secs (10 s)
    gpu0_recovered(w, orch, pids, RecoveryTrigger.CLIENT_RPC_FAILURE)
    assert orch.supervisor.recovered[0].daemon_restarted
    orch.down()


def test_a_server_that_ends_with_no_agent_on_it_is_not_a_failure(tmp_path: Path) -> None:
    w, orch, pipe0, _pids = two_gpus(tmp_path)
    orch.stop("a")
    orch.stop("b")
    w.run(orch, 1)
    w.mps.kill_server(pipe0)
    one_tick(w, orch)
    assert not orch.supervisor or uuid(0) not in orch.supervisor.recoveries
    assert any("no agent was using it" in e.message for e in orch.events())
    orch.down()


def test_the_loop_and_down_reap(tmp_path: Path) -> None:
    w, orch, _, _ = two_gpus(tmp_path)
    ticks = w.mps.reaped_calls
    assert ticks > 0
    orch.down()
    assert w.mps.reaped_calls > ticks  # after the daemons quit


def test_client_list_against_the_agents_placed_there(tmp_path: Path) -> None:
    w = World(tmp_path, gpus=1)
    orch = w.orchestrator(config(agent("a"), agent("b")))
    orch.up()
    w.run(orch, 2)
    pipe0 = w.state / "mps" / uuid(0) / "pipe"
    w.mps.connect_client(pipe0, w.pid(orch, "b"))  # a never became a client: it bypasses MPS
    w.mps.connect_client(pipe0, 99999)  # someone else's client
    w.run(orch, 6)
    said = [e.message for e in orch.events() if e.kind == EventKind.DAEMON]
    assert sum("a (pid" in m and "not a client" in m for m in said) == 1
    assert not any("b (pid" in m for m in said)
    assert sum("MPS client 99999" in m and "not an agent of colo" in m for m in said) == 1
    assert not orch.supervisor.recovered  # information only
    orch.down()


def test_context_lost_with_mps_words_in_its_log_but_a_healthy_gpu_restarts_only_that_agent(tmp_path: Path) -> None:
    w, orch, _, pids = two_gpus(tmp_path)
    with open(w.state / "logs" / "a.log", "a") as fh:
        fh.write("context lost: CUDA error: cudaErrorMpsRpcFailure\n")
    w.runner.exit(pids["a"], code=EXIT_CONTEXT_LOST)
    w.run(orch, 2)
    assert not orch.supervisor.recovered and (not orch.supervisor or uuid(0) not in orch.supervisor.recoveries)
    assert w.pid(orch, "b") == pids["b"] and orch.status("a").state == S.RUNNING
    orch.down()


def test_recovery_kills_an_agent_stuck_in_teardown_after_one_second_and_times_its_phases(tmp_path: Path) -> None:
    """An agent whose MPS server died can hang in CUDA's teardown: recovery SIGKILLs it after
    RECOVERY_STOP_WAIT_SECS, not the agent's 10 s stop_wait_secs; the done event says where the seconds went."""
    import signal

    from colo.supervise.recovery.mps_recovery import RECOVERY_STOP_WAIT_SECS, RecoveryPhase

    w, orch, pipe0, pids = two_gpus(tmp_path)
    w.runner.ignore_signals.add(pids["a"])  # ignores SIGTERM; only SIGKILL ends it
    w.mps.kill_server(pipe0)
    one_tick(w, orch)
    w.run(orch, RECOVERY_STOP_WAIT_SECS + TICK_SECS)
    assert signal.SIGKILL in w.runner.procs[pids["a"]].signals
    w.run(orch, 4)
    gpu0_recovered(w, orch, pids, RecoveryTrigger.SERVER_DIED)
    (rec,) = orch.supervisor.recovered
    assert RECOVERY_STOP_WAIT_SECS <= rec.phase_secs[RecoveryPhase.STOPPING] <= RECOVERY_STOP_WAIT_SECS + 2 * TICK_SECS
    assert set(rec.phase_secs) == {RecoveryPhase.STOPPING, RecoveryPhase.WAITING, RecoveryPhase.RELAUNCHING}
    done = [e.message for e in orch.events() if "MPS fault recovery on" in e.message and "done in" in e.message]
    assert done and "stop_s=" in done[-1] and "relaunch_s=" in done[-1]
    orch.down()
