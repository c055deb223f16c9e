"""colo tune on CPU: the proposal math, when history is too short to trust, what freed memory buys, the
rollback decision, the tuned-limits file and the plan that uses it, and the usage history (windows,
retention, atomic writes)."""

from __future__ import annotations

import json
import threading
from dataclasses import replace
from pathlib import Path

import pytest

from colo import units
from colo.clock import FakeClock
from colo.errors import ConfigError, SupervisorError
from colo.plan import inventory_slots, plan
from colo.plan.limits import declared_memory
from colo.plan.types import LimitSource, MemoryInputs, TunedLimit
from colo.spec import load_config_text
from colo.supervise.planning import memory_inputs, plan_config
from colo.supervise.snapshots import Shape, UsageSample
from colo.supervise.statedir import StateDirPaths
from colo.supervise.store import Store
from colo.supervise.tune import limits_file
from colo.supervise.tune.formula import (
    ALLOCATOR_GRANULE_BYTES,
    AgentFacts,
    NeedSource,
    TuneSettings,
    propose,
    propose_one,
    rollback_limit,
    room,
)
from colo.supervise.tune.history import UsageRecorder
from colo.supervise.tune.inputs import TunedChange, worst_shapes, write_tuned
from testkit import two_encoder_config_yaml

MIB, GIB = units.MIB, units.GIB
WORST = (Shape("m", 32, 512),)


def facts(**kw: object) -> AgentFacts:
    base: dict[str, object] = {
        "agent": "a", "gpu": "gpu0", "gpu_key": "local:0", "limit_bytes": 2 * GIB, "worst_shapes": WORST,
    }
    base.update(kw)
    return AgentFacts(**base)  # type: ignore[arg-type]


def windows(peaks: list[int], *, agent: str = "a", secs: float = 10.0, shapes: tuple[Shape, ...] = WORST,
            oom: int = 0, start: float = 1000.0, limit: int = 2 * GIB) -> list[UsageSample]:
    return [
        UsageSample(agent, start + i * secs, start + (i + 1) * secs, p, limit, 5, "local:0", shapes,
                    oom if i == 0 else 0, 3)
        for i, p in enumerate(peaks)
    ]


def test_proposal_is_peak_plus_allocator_granule_rounded() -> None:
    p = propose_one(facts(), windows([900 * MIB] * 8), TuneSettings())
    assert p.trusted and p.observed_peak_bytes == 900 * MIB and p.stdev_bytes == 0
    assert p.proposed_bytes == units.round_up(900 * MIB + ALLOCATOR_GRANULE_BYTES, 32 * MIB) == 960 * MIB
    assert p.freed_bytes == 2 * GIB - 960 * MIB
    assert p.observed_peak_bytes / p.proposed_bytes >= 0.85


def test_margin_grows_with_the_spread_of_the_peaks() -> None:
    steady = propose_one(facts(), windows([1000 * MIB] * 8), TuneSettings())
    moving = propose_one(facts(), windows([600 * MIB, 1000 * MIB] * 4), TuneSettings())
    assert moving.stdev_bytes == 200 * MIB
    assert moving.margin_bytes is not None and moving.margin_bytes >= 3 * 200 * MIB
    assert moving.proposed_bytes is not None and steady.proposed_bytes is not None
    assert moving.proposed_bytes > steady.proposed_bytes


def test_idle_windows_before_the_worst_case_do_not_widen_the_margin() -> None:
    idle = windows([300 * MIB] * 4, shapes=(Shape("m", 1, 8),))
    busy = windows([1000 * MIB] * 8, start=2000.0)
    p = propose_one(facts(), idle + busy, TuneSettings())
    assert p.stdev_bytes == 0 and p.proposed_bytes == 1056 * MIB
    assert 1000 / 1056 >= 0.85


def test_profiled_worst_case_counts_when_larger_than_the_peak() -> None:
    p = propose_one(facts(profiled_bytes=1500 * MIB, need_bytes=1500 * MIB, need_source=NeedSource.MEASURED),
                    windows([900 * MIB] * 8), TuneSettings())
    assert p.basis_bytes == 1500 * MIB and p.proposed_bytes == 1568 * MIB


def test_never_below_the_worst_case_need_unless_the_history_measured_it() -> None:
    # the worst case never seen, but profiled: the (estimated) need is a floor
    unseen = windows([500 * MIB] * 8, shapes=(Shape("m", 4, 64),))
    p = propose_one(facts(profiled_bytes=400 * MIB, need_bytes=1200 * MIB, need_source=NeedSource.ESTIMATED), unseen,
                    TuneSettings())
    assert p.proposed_bytes == 1216 * MIB and "need" in p.reason
    # the history served the worst case: the observation outranks an estimate
    seen = propose_one(facts(need_bytes=1200 * MIB, need_source=NeedSource.ESTIMATED), windows([500 * MIB] * 8),
                       TuneSettings())
    assert seen.worst_case_seen and seen.proposed_bytes == 544 * MIB
    # ...but not a measurement
    measured = propose_one(facts(need_bytes=1200 * MIB, need_source=NeedSource.MEASURED), windows([500 * MIB] * 8),
                           TuneSettings())
    assert measured.proposed_bytes == 1216 * MIB


@pytest.mark.parametrize(
    ("samples", "extra", "says"),
    [
        ([], {}, "no usage history"),
        (windows([900 * MIB] * 3), {}, "too little history"),
        (windows([900 * MIB] * 8, secs=5.0), {}, "too little history"),  # 8 windows but only 40 s
        (windows([900 * MIB] * 8, shapes=(Shape("m", 8, 512),)), {}, "never served its worst case"),
        (windows([900 * MIB] * 8, shapes=()), {"worst_shapes": ()}, "command agent"),
        (windows([900 * MIB] * 8, oom=1), {}, "ran out of memory"),
    ],
)
def test_too_little_history_proposes_nothing(samples: list[UsageSample], extra: dict[str, object], says: str) -> None:
    p = propose_one(facts(**extra), samples, TuneSettings())
    assert not p.trusted and p.proposed_bytes is None and p.freed_bytes == 0
    assert says in p.reason


def test_a_limit_it_failed_under_is_never_proposed_again() -> None:
    p = propose_one(facts(failed_limit_bytes=1024 * MIB), windows([900 * MIB] * 8), TuneSettings())
    assert p.proposed_bytes == 1056 * MIB and "ran out of memory under" in p.reason


def test_report_totals_and_what_freed_memory_buys() -> None:
    fs = [facts(agent="a", limit_bytes=3 * GIB), facts(agent="b", limit_bytes=2 * GIB), facts(agent="c")]
    hist = windows([900 * MIB] * 8, agent="a") + windows([400 * MIB] * 8, agent="b")
    report = propose(fs, hist)
    by = {p.agent: p for p in report.proposals}
    assert by["a"].proposed_bytes == 960 * MIB and by["b"].proposed_bytes == 448 * MIB
    assert not by["c"].trusted
    assert report.total_before_bytes == 7 * GIB
    assert report.total_after_bytes == 960 * MIB + 448 * MIB + 2 * GIB
    (g,) = report.gpus
    assert g.freed_bytes == 3712 * MIB
    assert g.room[0] == ("c", 1)  # the largest agent that fits at least once
    assert g.text() == "frees 3.6 GiB on gpu0: room for 1 more c"
    assert room(3 * GIB, {"x": 1 * GIB, "y": 4 * GIB}) == (("x", 3),)
    assert json.loads(json.dumps(report.to_dict()))["agents"][0]["peak_over_proposed"] == round(900 / 960, 3)


def test_rollback_decision() -> None:
    assert rollback_limit(LimitSource.TUNED, 1 * GIB, 2 * GIB, False) == 2 * GIB
    assert rollback_limit(LimitSource.POLICY, 1 * GIB, 2 * GIB, False) is None  # its own OOM under the policy's limit
    assert rollback_limit(LimitSource.TUNED, 1 * GIB, 2 * GIB, True) is None  # already rolled back
    assert rollback_limit(LimitSource.TUNED, 2 * GIB, 1 * GIB, False) is None  # tuning raised it: nothing above to go to
    assert rollback_limit(LimitSource.TUNED, 1 * GIB, None, False) is None


CFG = two_encoder_config_yaml("{history_window: 10s, history_retention: 1h, history_max_rows: 100}")


def test_tuned_limits_file_feeds_the_plan_and_says_so(tmp_path: Path) -> None:
    cfg = load_config_text(CFG, "t.yaml")
    before = {a.name: a for a in plan_config(cfg, state_dir=tmp_path).plan.agents}
    assert before["small"].limit_bytes == int(1.5 * GIB) and before["small"].limit_source is LimitSource.POLICY
    path = StateDirPaths(tmp_path).tuned_limits
    entry = limits_file.TunedEntry(768 * MIB, 700 * MIB, before["small"].limit_bytes, limits_file.agent_key(cfg, "small"),
                             "peak 700 MiB over 9 windows", 1.0)
    limits_file.save(path, {"small": entry, "gone": entry})
    after = {a.name: a for a in plan_config(cfg, state_dir=tmp_path).plan.agents}
    assert after["small"].limit_bytes == 768 * MIB and after["small"].limit_source is LimitSource.TUNED
    assert after["small"].requirement_bytes == 700 * MIB
    assert after["small"].requirement_source.startswith("observed: peak 700 MiB")
    assert after["big"] == before["big"]
    # a changed worst case makes the entry stale; a rolled-back entry no longer applies
    bigger = load_config_text(CFG.replace("{memory: 1GiB, batch_size: 32", "{memory: 1GiB, batch_size: 64"), "t.yaml")
    assert plan_config(bigger, state_dir=tmp_path).plan.agent("small").limit_source is LimitSource.POLICY
    assert limits_file.mark_rolled_back(path, "small", 5.0) is not None
    rolled = plan_config(cfg, state_dir=tmp_path).plan.agent("small")
    assert rolled.limit_bytes == int(1.5 * GIB) and rolled.limit_source is LimitSource.ROLLED_BACK
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="tuned limits file"):
        memory_inputs(cfg, inventory_slots(cfg), state_dir=tmp_path)


def test_planner_takes_tuned_limits_for_placement() -> None:
    cfg = load_config_text(CFG.replace("gpus: [{memory: 10GiB}]", "gpus: [{memory: 4GiB}]"), "t.yaml")
    assert plan(cfg, inventory_slots(cfg)).unplaced  # 1.5 + 3 GiB do not fit in 4 GiB
    mem = MemoryInputs(declared_memory(cfg), {}, {"big": TunedLimit("big", 2 * GIB, 1800 * MIB, "x")})
    p = plan(cfg, inventory_slots(cfg), mem)
    assert not p.unplaced and p.agent("big").limit_bytes == 2 * GIB and p.agent("big").margin_bytes == 248 * MIB


def test_write_tuned_keeps_the_first_previous_limit(tmp_path: Path) -> None:
    cfg = load_config_text(CFG, "t.yaml")
    fs = [facts(agent="small", limit_bytes=int(1.5 * GIB), worst_shapes=worst_shapes(cfg, "small"))]
    hist = windows([700 * MIB] * 8, agent="small", shapes=worst_shapes(cfg, "small"))
    report = propose(fs, hist)
    written = write_tuned(cfg, tmp_path, TunedChange.accepted(report.proposals), now=10.0)
    assert written["small"].previous_limit_bytes == int(1.5 * GIB) and written["small"].limit_bytes == 768 * MIB
    # tuned again from the tuned limit: the limit to roll back to stays the policy's
    fs2 = [facts(agent="small", limit_bytes=768 * MIB, limit_source=LimitSource.TUNED, worst_shapes=worst_shapes(cfg, "small"))]
    again = write_tuned(cfg, tmp_path, TunedChange.accepted(propose(fs2, windows([500 * MIB] * 8, agent="small",
                        shapes=worst_shapes(cfg, "small"))).proposals), now=20.0)
    assert again["small"].previous_limit_bytes == int(1.5 * GIB) and again["small"].limit_bytes == 544 * MIB


def test_history_windows_retention_and_bounds(tmp_path: Path) -> None:
    store = Store(tmp_path / "colo.db")
    clock = FakeClock()
    rec = UsageRecorder(store, clock, window_secs=10.0, retention_secs=60.0, max_rows=5)
    for step in range(12):  # 12 polls, 2 s apart: windows of 10 s
        rec.note("a", (100 + step) * MIB, GIB, "local:0", WORST, requests=step * 2)
        rec.note("b", None, GIB, "local:0")  # not in the reading: no row unless polled
        clock.advance(2.0)
        rec.tick()
    rows = store.usage()
    assert [r.agent for r in rows] == ["a", "a"]
    first = rows[0]
    assert first.polls == 5 and first.peak_bytes == 104 * MIB and first.shapes == WORST and first.requests == 8
    assert first.end - first.start == pytest.approx(10.0)
    rec.note_oom("a")
    assert rec.tick(force=True)[0].oom == 1
    # retention by age: rows that ended more than 60 s before the newest write are pruned
    clock.advance(120.0)
    rec.note("a", MIB, GIB, "local:0")
    rec.tick(force=True)
    assert len(store.usage()) == 1 and rec.rows == 1
    # bounded by max_rows
    for _ in range(8):
        rec.note("a", MIB, GIB, "local:0")
        clock.advance(10.0)
        rec.tick()
    assert store.usage_rows() == 5
    assert store.usage(since=clock.wall() - 25.0)[0].end >= clock.wall() - 25.0


def test_history_write_is_one_transaction(tmp_path: Path) -> None:
    store = Store(tmp_path / "colo.db")
    bad = UsageSample("a", 0.0, 1.0, 1, 1, 1, None, (Shape("m", 1, 1),))
    store.add_usage([bad], keep_after=0.0, max_rows=10)

    unbindable = UsageSample("b", 0.0, 1.0, object(), 1, 1)  # type: ignore[arg-type]  # fails halfway
    with pytest.raises(SupervisorError, match="failed"):
        store.add_usage([bad, unbindable], keep_after=0.0, max_rows=10)
    assert store.usage_rows() == 1  # nothing of the failed batch was written


def test_parse_duration() -> None:
    assert units.parse_duration("7d") == 7 * 86400
    assert units.parse_duration("90s") == 90
    assert units.parse_duration("15m") == 900
    assert units.parse_duration(30) == 30
    for bad in ("", "-1s", "3 parsecs", "d"):
        with pytest.raises(ValueError, match="duration"):
            units.parse_duration(bad)


def test_tuned_limits_file_has_one_writer_at_a_time(tmp_path: Path) -> None:
    """Two writers (two open file descriptions, as two processes have): the second waits for the first's
    lock, then reads what the first wrote — neither change is lost."""
    path = StateDirPaths(tmp_path).tuned_limits
    entry = limits_file.TunedEntry(768 * MIB, 700 * MIB, int(1.5 * GIB), ())
    inside, release = threading.Event(), threading.Event()

    def slow(entries: dict[str, limits_file.TunedEntry]) -> dict[str, limits_file.TunedEntry]:
        inside.set()
        release.wait(10)
        return {**entries, "a": entry}

    first = threading.Thread(target=lambda: limits_file.update(path, slow))
    first.start()
    assert inside.wait(10)
    second = threading.Thread(target=lambda: limits_file.update(path, lambda e: {**e, "b": entry}))
    second.start()
    second.join(0.3)
    assert second.is_alive()  # waiting for the lock
    release.set()
    first.join(10)
    second.join(10)
    assert sorted(limits_file.load(path)) == ["a", "b"]


def test_tuned_change_from_a_request_body_is_checked() -> None:
    ok = TunedChange("small", 768 * MIB, 700 * MIB, int(1.5 * GIB), LimitSource.POLICY, "peak")
    assert TunedChange.from_dict(ok.to_dict()) == ok
    with pytest.raises(ConfigError, match="limit_bytes"):
        TunedChange.from_dict({**ok.to_dict(), "limit_bytes": "lots"})
    with pytest.raises(ConfigError, match="current_source"):
        TunedChange.from_dict({**ok.to_dict(), "current_source": "guess"})
    with pytest.raises(ConfigError, match="no agent 'ghost'"):
        write_tuned(load_config_text(CFG, "t.yaml"), Path("/nonexistent"), [replace(ok, agent="ghost")], now=1.0)
