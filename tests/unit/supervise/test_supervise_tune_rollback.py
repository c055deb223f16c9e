"""colo.supervise.tune.rollback: an agent out of memory under a tuned limit gets its earlier limit back, marked
in ``tuned_limits.json`` under the file's lock; an out-of-memory error under any other limit writes nothing; and
the rollback's event text says what happened."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from colo.errors import ConfigError, PlanError
from colo.spec import load_config_text
from colo.supervise.planning import plan_config
from colo.supervise.statedir import StateDirPaths
from colo.supervise.tune import limits_file
from colo.supervise.tune.rollback import event_text, mark_rolled_back
from colo.units import GIB, MIB

CFG = """
version: 1
gpus: [{memory: 10GiB}]
models:
  google/bert_uncased_L-2_H-128_A-2: {memory: 1GiB, batch_size: 32, max_seq_len: 512}
agents:
  small: {models: [google/bert_uncased_L-2_H-128_A-2], port: 9301}
"""


def _tuned(tmp_path: Path, *, previous_bytes: int = int(1.5 * GIB)) -> Path:
    """A state dir whose tuned-limits file gives ``small`` 768 MiB in place of ``previous_bytes``."""
    cfg = load_config_text(CFG, "t.yaml")
    path = StateDirPaths(tmp_path).tuned_limits
    entry = limits_file.TunedEntry(768 * MIB, 700 * MIB, previous_bytes, limits_file.agent_key(cfg, "small"), "", 1.0)
    limits_file.save(path, {"small": entry})
    return path


def test_an_oom_under_a_tuned_limit_restores_the_earlier_one_and_marks_the_entry(tmp_path: Path) -> None:
    path = _tuned(tmp_path)
    cfg = load_config_text(CFG, "t.yaml")
    ap = plan_config(cfg, state_dir=tmp_path).plan.agent("small")
    assert ap.limit_bytes == 768 * MIB  # the plan in force runs the tuned limit
    assert mark_rolled_back(path, ap, ap.limit_bytes, now_wall=123.0) == int(1.5 * GIB)
    assert limits_file.load(path)["small"].rolled_back_at == 123.0
    # Planned again, the agent has the policy's limit; a second OOM (same plan object) rolls nothing back twice.
    assert plan_config(cfg, state_dir=tmp_path).plan.agent("small").limit_bytes == int(1.5 * GIB)
    assert mark_rolled_back(path, ap, ap.limit_bytes, now_wall=200.0) is None
    assert limits_file.load(path)["small"].rolled_back_at == 123.0  # the first mark is kept


def test_an_oom_under_the_policys_limit_or_a_raised_one_writes_nothing(tmp_path: Path) -> None:
    cfg = load_config_text(CFG, "t.yaml")
    policy = plan_config(cfg, state_dir=tmp_path).plan.agent("small")  # no file yet: the policy's limit
    path = StateDirPaths(tmp_path).tuned_limits
    assert mark_rolled_back(path, policy, policy.limit_bytes, now_wall=1.0) is None
    assert not path.exists()  # nothing written: update() writes only a change
    # Tuning raised the limit (previous below the current one): nothing above to go back to.
    _tuned(tmp_path, previous_bytes=512 * MIB)
    raised = plan_config(cfg, state_dir=tmp_path).plan.agent("small")
    assert mark_rolled_back(path, raised, raised.limit_bytes, now_wall=2.0) is None
    assert limits_file.load(path)["small"].rolled_back_at is None
    # An agent without an entry (renamed since) leaves the file as it was.
    assert mark_rolled_back(path, replace(raised, name="other"), raised.limit_bytes, now_wall=3.0) is None
    assert sorted(limits_file.load(path)) == ["small"]


def test_a_corrupt_file_is_a_config_error_and_stays_untouched(tmp_path: Path) -> None:
    cfg = load_config_text(CFG, "t.yaml")
    ap = plan_config(cfg, state_dir=tmp_path).plan.agent("small")
    path = StateDirPaths(tmp_path).tuned_limits
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="tuned limits file"):
        mark_rolled_back(path, ap, ap.limit_bytes, now_wall=1.0)
    assert path.read_text() == "{not json"


def test_event_text_names_both_limits_or_why_the_plan_was_not_made() -> None:
    text = event_text(768 * MIB, int(1.5 * GIB), None)
    assert "tuned limit 768.0 MiB" in text and "restored its limit of 1.5 GiB" in text
    failed = event_text(768 * MIB, int(1.5 * GIB), PlanError("no GPU left"))
    assert "marked rolled back" in failed and "no GPU left" in failed and "next apply restores" in failed
    assert "restored its limit" not in failed
