"""The process harness with a CPU workload: barrier, timed window, errors, cleanup (a few seconds in all)."""

from __future__ import annotations

import os
import time

import psutil
import pytest

from colo.bench.harness import BenchError, child_env, run_point
from colo.bench.instance import timed_loop
from colo.bench.loads.base import RequestOutcome
from colo.bench.run import BenchPlan, run_bench
from colo.bench.spec import InstanceSpec
from colo.clock import FakeClock
from colo.errors import UsageError


def _children() -> list[psutil.Process]:
    return [p for p in psutil.Process().children(recursive=True) if p.is_running() and p.status() != "zombie"]


def test_instances_start_together_after_uneven_warm_up() -> None:
    specs = [
        InstanceSpec("cpu", {"sleep_secs": 0.005, "prepare_secs": 0.0}, label="fast", duration_secs=0.3),
        InstanceSpec("cpu", {"sleep_secs": 0.005, "prepare_secs": 1.0}, label="slow", duration_secs=0.3),
    ]
    messages: list[str] = []
    point = run_point(specs, mode="timeslice", progress=messages.append)
    assert point.concurrency == 2 and [i.label for i in point.instances] == ["fast", "slow"]
    # The slow one warmed up 1 s longer; the barrier still started both windows together (the margin is for a
    # loaded 2-core machine waking the processes up).
    assert point.start_spread_secs < 0.5
    for inst in point.instances:
        assert inst.elapsed_secs >= 0.3
        assert inst.requests >= 10 and inst.items == inst.requests
        assert 0.004 < inst.latencies_secs[0] < 0.2
        assert inst.pid != os.getpid() and inst.info["device"] == "cpu" and "env" in inst.info
    assert point.aggregate_per_sec == pytest.approx(sum(i.per_sec for i in point.instances))
    assert any("loading" in m for m in messages) and any("running" in m for m in messages)
    assert not _children()


def test_a_failing_instance_stops_the_point_and_says_why() -> None:
    specs = [
        InstanceSpec("cpu", {"sleep_secs": 0.001}, label="good", duration_secs=0.2),
        InstanceSpec("cpu", {"fail_in": "prepare"}, label="bad", duration_secs=0.2),
    ]
    with pytest.raises(BenchError) as err:
        run_point(specs, mode="timeslice")
    assert "bad" in str(err.value) and "told to fail in prepare" in str(err.value)
    assert not _children()


def test_a_request_failure_is_reported() -> None:
    with pytest.raises(BenchError, match="told to fail in request"):
        run_point([InstanceSpec("cpu", {"fail_in": "request"}, duration_secs=0.2)], mode="timeslice")
    assert not _children()


def test_warm_up_timeout_kills_the_instances() -> None:
    spec = InstanceSpec("cpu", {"prepare_secs": 30.0}, label="sleepy", duration_secs=0.2)
    t0 = time.monotonic()
    with pytest.raises(BenchError, match="timed out while loading: no READY from sleepy"):
        run_point([spec], mode="timeslice", ready_timeout_secs=0.5)
    assert time.monotonic() - t0 < 15
    assert not _children()


def test_bad_workload_parameters_fail_in_the_child() -> None:
    with pytest.raises(BenchError, match="bad parameters"):
        run_point([InstanceSpec("cpu", {"no_such": 1}, duration_secs=0.1)], mode="timeslice")


def test_run_bench_measures_single_and_merged_bound() -> None:
    base = InstanceSpec("cpu", {"sleep_secs": 0.01, "items_per_request": 2.0}, duration_secs=0.3)
    plan = BenchPlan("cpu", base=base, modes=("timeslice",), concurrencies=(2,))
    assert plan.steps() == [("timeslice", 1), ("timeslice", 2), ("merged", 2)]
    result = run_bench(plan)
    assert [(p.mode, p.concurrency) for p in result.points] == plan.steps()
    merged = result.point("merged", 2)
    assert merged is not None and merged.instances[0].items == 4.0 * merged.instances[0].requests
    eff = result.efficiency("timeslice", 2)
    assert eff is not None and 0.7 < eff < 1.3  # sleeping instances scale
    assert result.bound(2) == merged.aggregate_per_sec
    assert result.machine["gpu"] is None and result.settings["concurrency"] == [1, 2]


def test_plan_validation() -> None:
    base = InstanceSpec("cpu")
    with pytest.raises(UsageError):
        BenchPlan("x")
    with pytest.raises(UsageError):
        BenchPlan("x", base=base, modes=("fast",))
    with pytest.raises(UsageError):
        BenchPlan("x", base=base, concurrencies=(0,))
    with pytest.raises(UsageError, match="needs an NVIDIA GPU"):
        run_bench(BenchPlan("x", base=base, modes=("mps",)))
    fixed = BenchPlan("x", fixed=(base, base), modes=("timeslice", "mps"))
    assert fixed.steps() == [("timeslice", 2), ("mps", 2)]
    assert BenchPlan("x", base=InstanceSpec("http", {"url": "u"})).merged(2) is None


def test_spec_round_trip_and_errors() -> None:
    spec = InstanceSpec("encoder", {"model": "m", "batch_size": 8}, label="a", duration_secs=2.5, env={"X": "1"})
    assert InstanceSpec.from_json(spec.to_json()) == spec
    assert spec.with_params(batch_size=16).params["batch_size"] == 16
    assert spec.describe() == "encoder(model=m, batch_size=8)"
    with pytest.raises(UsageError):
        InstanceSpec("gpu-magic")
    with pytest.raises(UsageError):
        InstanceSpec("cpu", duration_secs=0)
    with pytest.raises(UsageError):
        InstanceSpec.from_json("{not json")


def test_child_env_puts_colo_on_pythonpath() -> None:
    env = child_env({"PYTHONPATH": "/elsewhere"}, {"A": "b"})
    parts = env["PYTHONPATH"].split(os.pathsep)
    assert parts[1] == "/elsewhere" and parts[0].endswith("src") and env["A"] == "b"


class _StepClock(FakeClock):
    """Advances 0.25 s per reading: a fake clock for the timed loop."""

    def __init__(self) -> None:
        super().__init__(100.0)

    def monotonic(self) -> float:
        self.advance(0.25)
        return super().monotonic()


class _Counting:
    unit = "item"

    def __init__(self) -> None:
        self.calls = 0

    def prepare(self) -> dict[str, object]:
        return {}

    def request(self) -> RequestOutcome:
        self.calls += 1
        return RequestOutcome(3.0, {"eval_secs": 0.1})

    def close(self) -> None:
        return None


def test_timed_loop_with_a_fake_clock() -> None:
    work = _Counting()
    result = timed_loop(work, 1.0, clock=_StepClock())
    # start=100.25; each request reads the clock twice (+0.5 s): ends at 100.75, 101.25 (>= 1 s elapsed).
    assert work.calls == 2
    assert result["items"] == 6.0 and result["elapsed_secs"] == pytest.approx(1.0)
    assert result["latencies_secs"] == [0.25, 0.25]
    assert result["extra"] == {"eval_secs": pytest.approx(0.2)}


def test_a_group_reuses_its_processes_across_levels() -> None:
    from colo.bench.harness import InstanceGroup

    spec = InstanceSpec("cpu", {"sleep_secs": 0.005}, duration_secs=0.2)
    with InstanceGroup([spec, spec, spec]) as group:
        one, _ = group.run(1)
        three, activity = group.run(3)
        assert activity is None
        assert [r.index for r in one] == [0] and [r.index for r in three] == [0, 1, 2]
        assert one[0].pid == three[0].pid  # the same process served both windows
        assert all(r.requests >= 5 for r in three)
        victim = psutil.Process(three[2].pid)
        victim.kill()  # an instance that dies while idle is reported at its next window
        victim.wait(timeout=5)
        with pytest.raises(BenchError, match="failed while (idle|running)"):
            group.run(3)
    assert not _children()


def test_a_fixed_set_of_different_instances_runs_together() -> None:
    from colo.bench.report import to_markdown

    agents = tuple(
        InstanceSpec("cpu", {"sleep_secs": s}, label=name, duration_secs=0.3)
        for name, s in (("analyst", 0.002), ("critic", 0.01), ("scout", 0.02))
    )
    result = run_bench(BenchPlan("newsroom", fixed=agents, modes=("timeslice",)))
    assert [(p.mode, p.concurrency) for p in result.points] == [("timeslice", 3)]
    rates = {i.label: i.per_sec for i in result.points[0].instances}
    assert rates["analyst"] > rates["critic"] > rates["scout"] > 0
    md = to_markdown([result])
    assert "| instance | time-slicing (item/s) | p50 ms | p99 ms |" in md and "| scout |" in md


_DRIVER = """
import sys
from colo.bench.harness import run_point, sigterm_as_exit
from colo.bench.spec import InstanceSpec
from colo.clock import FakeClock
spec = InstanceSpec("cpu", {"sleep_secs": 0.01}, duration_secs=60.0)
with sigterm_as_exit():
    run_point([spec, spec], mode="timeslice", progress=lambda m: print(m, flush=True))
"""


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGKILL"])
def test_instances_do_not_outlive_a_killed_harness(sig: str) -> None:
    import signal
    import subprocess
    import sys

    driver = subprocess.Popen([sys.executable, "-c", _DRIVER], stdout=subprocess.PIPE, text=True,
                              env=child_env(os.environ, {}))
    try:
        assert driver.stdout is not None
        for line in driver.stdout:  # wait until the window is running: both instances are up
            if "running" in line:
                break
        instances = psutil.Process(driver.pid).children()
        assert len(instances) == 2
        driver.send_signal(getattr(signal, sig))
        driver.wait(timeout=30)
        _gone, alive = psutil.wait_procs(instances, timeout=15)
        assert not alive, f"instances outlived the harness after {sig}: {alive}"
    finally:
        if driver.poll() is None:
            driver.kill()
        driver.wait(timeout=10)
        if driver.stdout is not None:
            driver.stdout.close()
