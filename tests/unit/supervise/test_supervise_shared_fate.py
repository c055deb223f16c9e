"""Issue 21 on CPU: hung (not only dead) MPS seen within 2 s, every agent what its plan says, and faults during
recovery — fake MPS, fake NVML, fake processes, a fake clock. Each sequence ends with every agent RUNNING
*and* an MPS client, never in a degraded state that looks healthy."""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path

from test_supervise_orchestrator import World, agent, config, uuid

from colo.clock import FakeClock
from colo.gpu.nvml import ClientProcess
from colo.launch.health import HealthResult
from colo.launch.runner import FakeRunner, LaunchSpec
from colo.spec.config import HealthCheck
from colo.supervise.agent import GATE_RETRY_SECS, Agent, AgentSetup
from colo.supervise.orchestrator import TICK_SECS
from colo.supervise.policy import RestartRules
from colo.supervise.recovery.mps_recovery import STOPPING_BOUND_SECS, Recovery, RecoveryPhase, RecoveryTrigger
from colo.supervise.snapshots import EventKind
from colo.supervise.state import AgentState

S = AgentState


class Gpu0:
    """Agents a and b on GPU 0 (MPS), c on GPU 1 (MPS); NVML lists every live agent process as an MPS client
    of its GPU unless told otherwise (``plain``: pids listed as type C)."""

    def __init__(self, tmp_path: Path) -> None:
        self.w = World(tmp_path)
        self.orch = self.w.orchestrator(config(agent("a", gpu=0), agent("b", gpu=0), agent("c", gpu=1)))
        self.orch.up()
        self.pipe0 = self.w.state / "mps" / uuid(0) / "pipe"
        self.plain: set[str] = set()
        self.states_seen: list[dict[str, S]] = []
        self.run(2)
        self.connect()
        self.run(1.5)  # a GPU reading lists the servers: watched from now on

    def pid(self, name: str) -> int:
        return self.w.pid(self.orch, name)

    def connect(self) -> None:
        """Every live agent process becomes a client of its GPU's server (as a CUDA context under MPS)."""
        for name, gpu in (("a", 0), ("b", 0), ("c", 1)):
            st = self.orch.status(name)
            pipe = self.w.state / "mps" / uuid(gpu) / "pipe"
            try:
                d = self.w.mps.daemon_at(pipe)
            except KeyError:
                continue
            if st.pid is not None and not any(st.pid in s.clients for s in d.servers.values()):
                self.w.mps.connect_client(pipe, st.pid)

    def list_in_nvml(self) -> None:
        rows = []
        for name, gpu in (("a", 0), ("b", 0), ("c", 1)):
            st = self.orch.status(name)
            if st.pid is not None and st.state in (S.STARTING, S.RUNNING):
                rows.append(ClientProcess(st.pid, gpu, uuid(gpu), 100 << 20, name not in self.plain))
        self.w.backend.set_processes(rows)

    def run(self, secs: float, *, connect: bool = True) -> None:
        t = 0.0
        while t < secs:
            self.w.clock.advance(TICK_SECS)
            if connect:
                self.connect()
            self.list_in_nvml()
            self.orch.tick()
            self.states_seen.append({s.name: s.state for s in self.orch.statuses()})
            t += TICK_SECS

    def run_until_relaunching(self, *, connect: bool = True, server_up: bool = False) -> Recovery | None:
        """Ticks (at most 20) until GPU 0's recovery relaunches its agents (and, with ``server_up``, its daemon
        has a server again); that recovery, or None if it never got there."""
        sup = self.orch.supervisor
        assert sup is not None
        for _ in range(20):
            self.run(TICK_SECS, connect=connect)
            rec = sup.recoveries.get(uuid(0))
            relaunching = rec is not None and rec.phase == RecoveryPhase.RELAUNCHING
            if relaunching and (not server_up or self.w.mps.daemon_at(self.pipe0).servers):
                return rec
        return None

    def all_running_under_mps(self) -> None:
        for name in ("a", "b", "c"):
            st = self.orch.status(name)
            assert st.state == S.RUNNING, (name, st)
            assert st.mps_planned is True and st.mps_client is True, (name, st)


def recovery_on_gpu0(g: Gpu0) -> RecoveryTrigger | None:
    sup = g.orch.supervisor
    rec = sup.recoveries.get(uuid(0)) if sup else None
    return rec.trigger if rec else None


def test_a_stopped_server_is_seen_at_once_killed_and_its_gpu_recovered(tmp_path: Path) -> None:
    g = Gpu0(tmp_path)
    server = next(iter(g.w.mps.daemon_at(g.pipe0).servers))
    old_daemon = g.w.mps.daemon_at(g.pipe0).pid
    c_pid = g.pid("c")
    g.w.mps.signal(server, signal.SIGSTOP)  # hung: alive, answers nothing; the daemon stops answering too
    g.run(TICK_SECS)
    assert recovery_on_gpu0(g) == RecoveryTrigger.SERVER_HUNG
    assert (server, signal.SIGKILL) in g.w.mps.signals and (old_daemon, signal.SIGKILL) in g.w.mps.signals
    assert g.orch.status("a").state != S.RUNNING and g.orch.status("b").state != S.RUNNING
    g.run(4)
    (rec,) = g.orch.supervisor.recovered
    assert rec.trigger == RecoveryTrigger.SERVER_HUNG and rec.daemon_restarted and rec.ok
    assert rec.detect_secs is not None and rec.detect_secs <= 2.0
    assert g.w.mps.daemon_at(g.pipe0).pid != old_daemon
    assert g.pid("c") == c_pid  # the other GPU is not touched
    g.all_running_under_mps()
    g.orch.down()


def test_a_daemon_that_stops_answering_is_hung_within_two_seconds(tmp_path: Path) -> None:
    g = Gpu0(tmp_path)
    old = g.w.mps.daemon_at(g.pipe0).pid
    g.w.mps.hang(g.pipe0)
    waited = 0.0
    while recovery_on_gpu0(g) is None and waited < 5:
        g.run(TICK_SECS)
        waited += TICK_SECS
    assert recovery_on_gpu0(g) == RecoveryTrigger.DAEMON_HUNG and waited <= 2.0
    assert (old, signal.SIGKILL) in g.w.mps.signals
    hung = [e.message for e in g.orch.events() if e.kind == EventKind.MPS_FAULT]
    assert any("[daemon_hung]" in m and "did not answer get_server_list" in m for m in hung)
    g.run(4)
    (rec,) = g.orch.supervisor.recovered
    assert rec.trigger == RecoveryTrigger.DAEMON_HUNG and rec.daemon_restarted and rec.ok
    g.all_running_under_mps()
    g.orch.down()


def test_a_stopped_daemon_is_hung_at_once(tmp_path: Path) -> None:
    g = Gpu0(tmp_path)
    daemon = g.w.mps.daemon_at(g.pipe0).pid
    g.w.mps.signal(daemon, signal.SIGSTOP)
    g.run(TICK_SECS)
    assert recovery_on_gpu0(g) == RecoveryTrigger.DAEMON_HUNG
    g.run(4)
    g.all_running_under_mps()
    g.orch.down()


def test_an_agent_outside_mps_is_never_left_running_and_is_relaunched_as_a_client(tmp_path: Path) -> None:
    g = Gpu0(tmp_path)
    b_pid, c_pid = g.pid("b"), g.pid("c")
    assert g.orch.status("a").mps_client is True
    g.plain = {"a"}  # NVML lists a as a plain CUDA context (type C): no limit enforced
    g.run(1.0)
    assert g.orch.status("a").mps_client is False
    g.run(1.0)  # the second reading in a row that differs
    events = [e for e in g.orch.events() if e.kind == EventKind.MPS_FAULT and e.agent == "a"]
    assert events and "plain CUDA context" in events[-1].message and uuid(0) in events[-1].message
    assert g.orch.status("a").state != S.RUNNING
    assert recovery_on_gpu0(g) == RecoveryTrigger.NOT_AS_PLANNED
    g.plain = set()
    g.run(4)
    (rec,) = g.orch.supervisor.recovered
    assert rec.trigger == RecoveryTrigger.NOT_AS_PLANNED and rec.agents == ("a",) and rec.ok
    assert not rec.daemon_restarted  # its daemon answered: only the agent was relaunched
    assert g.pid("b") == b_pid and g.pid("c") == c_pid  # only the agent that differed
    g.all_running_under_mps()
    snap = g.orch.snapshot()
    assert snap.agent("a").to_dict()["mps_client"] is True
    g.orch.down()


def test_a_client_not_in_any_nvml_list_yet_is_unknown_not_judged(tmp_path: Path) -> None:
    g = Gpu0(tmp_path)
    g.w.backend.set_processes([])
    g.w.clock.advance(1.0)
    g.orch.tick()
    g.w.clock.advance(1.0)
    g.orch.tick()
    g.w.clock.advance(1.0)
    g.orch.tick()
    assert g.orch.status("a").mps_client is None and g.orch.status("a").state == S.RUNNING
    assert not [e for e in g.orch.events() if "not as planned" in e.message]
    g.orch.down()


def test_no_mps_client_starts_while_its_daemon_cannot_be_restored(tmp_path: Path) -> None:
    g = Gpu0(tmp_path)
    g.w.mps.fail_start = "the GPU is busy"
    before = len(g.orch.events(0, 10_000))
    g.w.mps.kill_daemon(g.pipe0)
    g.run(6)
    assert recovery_on_gpu0(g) == RecoveryTrigger.DAEMON_DIED
    assert {g.orch.status(n).state for n in ("a", "b")} <= {S.STOPPED, S.BACKOFF, S.STOPPING}
    assert all(s["a"] != S.STARTING and s["b"] != S.STARTING for s in g.states_seen[-10:])
    said = [e.message for e in g.orch.events() if e.kind == EventKind.DAEMON]
    failed = [m for m in said if "could not restart the MPS daemon" in m and "its agents wait" in m]
    assert len(failed) == 1  # tried every second, said once: the same reason is not an event again
    # The fault, two agents stopped, one failed restart: not a failure event (and a SIGKILL) per try.
    assert len(g.orch.events(0, 10_000)) - before <= 5
    g.w.mps.fail_start = "the GPU is still busy"
    g.run(3)
    said = [e.message for e in g.orch.events() if e.kind == EventKind.DAEMON]
    again = [m for m in said if "could not restart" in m]
    assert len(again) == 2 and "still busy" in again[-1]
    g.w.mps.fail_start = None
    g.run(4)
    (rec,) = g.orch.supervisor.recovered
    assert rec.ok and rec.daemon_restarted
    g.all_running_under_mps()
    g.orch.down()


Gate = Callable[[Agent], str | None]


def lone_agent(
    tmp_path: Path, *, launch_gate: Gate | None = None, ready_gate: Gate | None = None
) -> tuple[Agent, FakeClock, FakeRunner]:
    """One agent on GPU-x (health ``none``, up after 1 s, given up as not ready after 10 s; 2 s stop wait) with
    the supervisor's gates as given, a fake clock and a fake runner."""
    clock, runner = FakeClock(), FakeRunner()
    launch = LaunchSpec(("agent-bin",), (), None, "local:0", "GPU-x", 1024)
    health = HealthCheck(type="none", start_secs=1, startup_timeout_secs=10)
    a = Agent(
        AgentSetup("a", launch, health, RestartRules(stop_wait_secs=2)),
        runner=runner,
        probe=lambda c: HealthResult(True, "ok"),
        clock=clock,
        log_path=tmp_path / "a.log",
        on_event=lambda k, m: None,
        on_change=lambda a: None,
        launch_gate=launch_gate,
        ready_gate=ready_gate,
    )
    return a, clock, runner


def test_the_launch_gate_keeps_a_start_in_backoff_until_the_daemon_answers(tmp_path: Path) -> None:
    wait: list[str | None] = ["waiting for the MPS control daemon of GPU-x to answer"]
    a, clock, runner = lone_agent(tmp_path, launch_gate=lambda agent: wait[0])
    a.start()
    assert a.state == S.BACKOFF and not runner.spawned and "to answer" in (a.last_error or "")
    clock.advance(GATE_RETRY_SECS)
    a.tick()
    assert a.state == S.BACKOFF and not runner.spawned  # asked again: still waits
    wait[0] = None
    clock.advance(GATE_RETRY_SECS)
    a.tick()
    assert a.state == S.STARTING and len(runner.spawned) == 1


def test_the_daemon_dying_again_while_agents_relaunch_restarts_the_recovery_cleanly(tmp_path: Path) -> None:
    g = Gpu0(tmp_path)
    g.w.mps.kill_server(g.pipe0)
    sup = g.orch.supervisor
    assert sup is not None
    rec = g.run_until_relaunching()
    assert rec is not None and rec.phase == RecoveryPhase.RELAUNCHING
    g.w.mps.kill_daemon(g.pipe0)  # a second fault while the agents start
    g.run(TICK_SECS)
    again = sup.recoveries.get(uuid(0))
    # the same recovery, sent back: its agents stopped again and the daemon restored before any relaunch
    assert again is rec and rec.refaults == 1 and rec.daemon_restarted
    assert RecoveryPhase.STOPPING in rec.phase_secs and rec.phase_secs[RecoveryPhase.RELAUNCHING] > 0
    assert any("another MPS failure" in e.message and "[daemon_died]" in e.message for e in g.orch.events())
    g.run(5)
    (done,) = g.orch.supervisor.recovered  # one recovery, restarted, not two half ones
    assert done.trigger == RecoveryTrigger.SERVER_DIED and done.refaults == 1 and done.daemon_restarted and done.ok
    g.all_running_under_mps()
    g.orch.down()


def test_the_new_server_dying_and_then_hanging_during_recovery_still_ends_under_mps(tmp_path: Path) -> None:
    g = Gpu0(tmp_path)
    g.w.mps.kill_daemon(g.pipe0)
    sup = g.orch.supervisor
    assert sup is not None
    g.run_until_relaunching(server_up=True)
    g.run(1.0)  # a reading lists the new server: watched
    g.w.mps.kill_server(g.pipe0)
    g.run(2)
    servers = g.w.mps.daemon_at(g.pipe0).servers
    if servers:
        g.w.mps.signal(next(iter(servers)), signal.SIGSTOP)
    g.run(8)
    assert not sup.recoveries.active
    records = g.orch.supervisor.recovered
    assert records and all(r.ok for r in records)
    g.all_running_under_mps()
    g.orch.down()


def test_an_agent_stuck_in_teardown_past_sigkill_does_not_hold_the_recovery(tmp_path: Path) -> None:
    g = Gpu0(tmp_path)
    stuck = g.pid("a")
    proc = g.w.runner.procs[stuck]
    real_signal = g.w.runner.signal

    def unkillable(handle: object, sig: int) -> None:
        if getattr(handle, "pid", None) == stuck:
            proc.signals.append(sig)  # uninterruptible: even SIGKILL waits
            return
        real_signal(handle, sig)  # type: ignore[arg-type]

    g.w.runner.signal = unkillable  # type: ignore[method-assign]
    g.w.mps.kill_server(g.pipe0)
    g.run(STOPPING_BOUND_SECS + 2.0)
    assert signal.SIGKILL in proc.signals
    assert g.orch.status("b").state == S.RUNNING  # relaunched without waiting for a
    assert any("still has a process" in e.message for e in g.orch.events())
    g.w.runner.exit(stuck, sig=signal.SIGKILL)  # its teardown ends at last
    g.run(3)
    assert g.pid("a") != stuck
    g.all_running_under_mps()
    g.orch.down()


def test_status_shows_planned_and_actual_membership(tmp_path: Path) -> None:
    g = Gpu0(tmp_path)
    d = g.orch.status("a").to_dict()
    assert d["mps_planned"] is True and d["mps_client"] is True
    g.orch.down()


def test_the_probe_never_waits_for_its_query_and_a_stuck_one_counts_as_unanswered() -> None:
    import threading
    import time

    from colo.clock import FakeClock
    from colo.supervise.recovery.mps_probe import MpsProbe

    release = threading.Event()

    class SlowDaemon:
        def send(self, command: str, *, timeout_secs: float | None = None) -> str:
            release.wait(5)  # a control program that hangs (its own timeout not reached in this test)
            return "1\n"

    clock = FakeClock()
    probe = MpsProbe(clock)  # real worker threads
    try:
        started = time.monotonic()
        verdicts = []
        for _ in range(8):
            clock.advance(0.5)
            verdicts.append(probe.look("GPU-x", SlowDaemon(), 10, [], lambda pid: False))  # type: ignore[arg-type]
        assert time.monotonic() - started < 1.0  # eight looks, none waited for the hung query
        hung = [v for v in verdicts if v is not None]
        assert hung and hung[0].part == "daemon" and "did not answer" in hung[0].detail
        assert not probe.answering("GPU-x")
    finally:
        release.set()
        probe.close()


def test_gpu_info_and_colo_status_show_each_agents_membership(tmp_path: Path) -> None:
    from colo.api.gpu_view import gpu_info_document
    from colo.cli.status_cmd import _mps_cell

    g = Gpu0(tmp_path)
    g.plain = {"b"}
    g.run(1.0)
    snap = g.orch.snapshot()
    doc = gpu_info_document(snap.gpu, snap.agents)
    (gpu0,) = [x for x in doc["gpus"] if x["uuid"] == uuid(0)]
    by_agent = {row["agent"]: row for row in gpu0["agents_mps"]}
    assert gpu0["agents"] == ["a", "b"]
    assert by_agent["a"]["mps_planned"] is True and by_agent["a"]["mps_client"] is True
    assert by_agent["b"]["mps_client"] is False
    cells = {s.name: _mps_cell(s.to_dict()) for s in snap.agents}
    assert cells["a"] == "M+C" and "not MPS" in cells["b"]
    assert _mps_cell({"mps_planned": True, "mps_client": None}) == "?"
    assert _mps_cell({"mps_planned": False, "mps_client": None}) == "off"
    g.orch.down()


def test_a_failed_mps_process_query_makes_membership_unknown_not_false() -> None:
    """If NVML's MPS list cannot be read, every process would look like a plain context: colo must not judge."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "gpu"))
    from test_gpu_nvml import fake_pynvml, ident

    from colo.gpu.nvml import NvmlBackend

    mod = fake_pynvml()

    def broken(h: int) -> list[object]:
        raise RuntimeError("NVML_ERROR_INSUFFICIENT_SIZE")

    mod.nvmlDeviceGetMPSComputeRunningProcesses = broken
    rows = NvmlBackend(mod, identify=ident).processes()
    assert rows and all(r.mps_known is False for r in rows)
    assert all(r.mps_known for r in NvmlBackend(fake_pynvml(), identify=ident).processes())


def test_a_relaunched_agent_losing_its_context_again_restarts_the_recovery(tmp_path: Path) -> None:
    """The new server died before any reading listed it: the relaunched agents' own exits (code 4) say so."""
    from colo.modelserver.exit_codes import EXIT_CONTEXT_LOST

    g = Gpu0(tmp_path)
    g.w.mps.kill_server(g.pipe0)
    rec = g.run_until_relaunching(connect=False)
    assert rec is not None and rec.phase == RecoveryPhase.RELAUNCHING
    g.w.runner.exit(g.pid("a"), code=EXIT_CONTEXT_LOST)
    g.run(TICK_SECS, connect=False)
    assert rec.refaults == 1
    assert any("lost its new CUDA context" in e.message for e in g.orch.events())
    g.run(5)
    (done,) = g.orch.supervisor.recovered
    assert done.ok and done.refaults == 1
    g.all_running_under_mps()
    g.orch.down()
