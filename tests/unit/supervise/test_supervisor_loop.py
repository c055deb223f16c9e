"""colo.supervise.supervisor on a fake clock and runner: the loop starts every agent, rolls a change through
one agent at a time, forgets a retired agent once it stopped, keeps out-of-memory signs, and stops all."""

from __future__ import annotations

from pathlib import Path

from colo.clock import FakeClock
from colo.launch.health import HealthResult
from colo.launch.runner import FakeRunner, LaunchSpec
from colo.spec.config import HealthCheck
from colo.supervise.agent import AgentSetup
from colo.supervise.logs import AgentLogs
from colo.supervise.policy import RestartRules
from colo.supervise.snapshots import EventKind
from colo.supervise.state import AgentState
from colo.supervise.store import Store
from colo.supervise.supervisor import Supervisor

S = AgentState


def _setup(name: str, limit_bytes: int = 1024) -> AgentSetup:
    launch = LaunchSpec((f"{name}-bin",), (("A", "1"),), None, "local:0", None, limit_bytes)
    return AgentSetup(name, launch, HealthCheck(type="none", start_secs=2), RestartRules(stop_wait_secs=5))


class Loop:
    def __init__(self, tmp_path: Path) -> None:
        self.clock = FakeClock()
        self.runner = FakeRunner()
        self.store = Store(tmp_path / "colo.db")
        self.sup = Supervisor(
            runner=self.runner,
            probe=lambda check: HealthResult(True, "ok"),
            clock=self.clock,
            store=self.store,
            logs=AgentLogs(tmp_path / "logs"),
        )

    def run(self, secs: float, step: float = 0.5) -> None:
        for _ in range(int(secs / step)):
            self.clock.advance(step)
            self.sup.tick()

    def states(self) -> dict[str, AgentState]:
        return {s.name: s.state for s in self.sup.statuses()}


def test_agents_start_and_a_change_rolls_through_one_agent_at_a_time(tmp_path: Path) -> None:
    loop = Loop(tmp_path)
    for name in ("a", "b"):
        loop.sup.add(_setup(name)).start()
    loop.run(3)
    assert loop.states() == {"a": S.RUNNING, "b": S.RUNNING}
    assert sorted(r.status.name for r in loop.store.agents()) == ["a", "b"]  # every agent recorded
    first_pids = {n: loop.sup.agent(n).handle.pid for n in ("a", "b")}  # type: ignore[union-attr]
    loop.sup.roll([(_setup("a", 2048), "apply"), (_setup("b", 2048), "apply")])
    a_running_again = None
    for tick in range(40):  # 20 s at most
        loop.run(0.5)
        a, b = loop.sup.agent("a"), loop.sup.agent("b")
        a_new = a.handle is not None and a.handle.pid != first_pids["a"] and a.state == S.RUNNING
        if a_new and a_running_again is None:
            a_running_again = tick
        if a_running_again is None:  # b is not touched before a is RUNNING again
            assert b.state == S.RUNNING and b.handle is not None and b.handle.pid == first_pids["b"]
        if loop.states() == {"a": S.RUNNING, "b": S.RUNNING} and b.handle.pid != first_pids["b"]:  # type: ignore[union-attr]
            break
    assert a_running_again is not None and loop.states() == {"a": S.RUNNING, "b": S.RUNNING}
    assert all(loop.sup.agent(n).status().limit_bytes == 2048 for n in ("a", "b"))
    assert all(loop.sup.agent(n).handle.pid != first_pids[n] for n in ("a", "b"))  # type: ignore[union-attr]


def test_a_retired_agent_is_forgotten_once_stopped_and_stop_all_brings_all_down(tmp_path: Path) -> None:
    loop = Loop(tmp_path)
    for name in ("a", "b"):
        loop.sup.add(_setup(name)).start()
    loop.run(3)
    loop.sup.retire("b")
    loop.run(1)
    assert list(loop.sup.agents) == ["a"] and [r.status.name for r in loop.store.agents()] == ["a"]
    loop.sup.stop_all()
    loop.run(1)
    assert loop.sup.all_down() and loop.states() == {"a": S.STOPPED}


def test_out_of_memory_signs_are_kept_once_per_agent_until_taken(tmp_path: Path) -> None:
    loop = Loop(tmp_path)
    loop.sup.add(_setup("a"))
    loop.sup.event(EventKind.OOM, "a", "CUDA out of memory")
    loop.sup.event(EventKind.OOM, "a", "again")
    assert loop.sup.take_ooms() == ["a"] and loop.sup.take_ooms() == []
    assert [e.kind for e in loop.store.events(agent="a")].count(EventKind.OOM) == 2


def test_a_restarted_orchestrator_adopts_live_agents_retires_old_ones_and_starts_new_ones(tmp_path: Path) -> None:
    from colo.supervise.adoption import take_over

    first = Loop(tmp_path)
    for name in ("a", "b", "changed"):
        first.sup.add(_setup(name)).start()
    first.run(3)
    pids = {n: first.sup.agent(n).handle.pid for n in ("a", "b", "changed")}  # type: ignore[union-attr]
    records = first.store.agents()  # what a new orchestrator reads before it adds anything
    again = Supervisor(
        runner=first.runner,  # the processes kept running
        probe=lambda check: HealthResult(True, "ok"),
        clock=first.clock,
        store=first.store,
        logs=AgentLogs(tmp_path / "logs"),
    )
    done = take_over(again, first.runner, records, [_setup("a"), _setup("changed", 4096), _setup("new")])
    assert sorted(done.adopted) == ["a", "changed"] and done.started == ["new"]
    assert [(s.name, reason) for s, reason in done.roll] == [("changed", "configuration changed while colo was down")]
    assert again.agent("a").handle.pid == pids["a"]  # type: ignore[union-attr]
    for _ in range(6):
        first.clock.advance(0.5)
        again.tick()
    assert "b" not in again.agents and first.runner.procs[pids["b"]].exit is not None  # stopped and forgotten
    assert sorted(r.status.name for r in first.store.agents()) == ["a", "changed", "new"]


def test_the_publisher_polls_at_most_once_per_interval_and_freezes_snapshots() -> None:
    from colo.gpu.poller import GpuState
    from colo.spec.load import load_config_text
    from colo.supervise.publish import Publisher

    class Poller:
        reads = 0

        def read(self) -> GpuState:
            Poller.reads += 1
            return GpuState({"processes": [{"pid": 7, "used_memory_bytes": 5}]})

    clock = FakeClock()
    pub = Publisher(Poller(), clock, poll_secs=1.0)  # type: ignore[arg-type]
    assert pub.reading().error is not None  # before the first poll: no GPU reading yet
    pub.poll()
    pub.poll()
    clock.advance(0.5)
    pub.poll()
    assert Poller.reads == 1
    pub.poll(force=True)
    clock.advance(1.0)
    pub.poll()
    assert Poller.reads == 3
    cfg = load_config_text("version: 1\ngpus: [{name: A, memory: 8GiB}]\nmodels: {m: {memory: 1GiB}}\nagents: {a: {models: [m]}}")
    snap = pub.publish(cfg, None, [])
    assert pub.latest() is snap and snap.gpu is pub.reading() and snap.agents == ()
    assert pub.tree_memory([7, 999_999_999]) == {7: 5}  # from the last reading, not a second NVML read
    assert Publisher(None, clock).latest() is None
