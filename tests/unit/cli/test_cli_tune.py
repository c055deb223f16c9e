"""`colo tune` and the history side of `colo advise` through the CLI: --json, --since, --apply, errors."""

from __future__ import annotations

import json
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from colo.cli.main import app
from colo.spec import load_config
from colo.supervise.snapshots import Shape, UsageSample
from colo.supervise.store import Store
from colo.supervise.tune import limits_file
from colo.units import GIB, MIB
from testkit import two_encoder_config_yaml

runner = CliRunner()

CFG = two_encoder_config_yaml()
WORST = (Shape("google/bert_uncased_L-2_H-128_A-2", 32, 512, 0),)


@pytest.fixture
def world(tmp_path: Path) -> tuple[Path, Path]:
    cfg = tmp_path / "colo.yaml"
    cfg.write_text(CFG)
    sd = tmp_path / "state"
    store = Store(sd / "colo.db")
    import time

    now = time.time()
    rows = [
        UsageSample("small", now - 300 + 10 * i, now - 290 + 10 * i, 700 * MIB, int(1.5 * GIB), 5, "local:0",
                    WORST, 0, 4)
        for i in range(20)
    ] + [UsageSample("big", now - 30, now - 20, 2 * GIB, 3 * GIB, 5, "local:0", (), 0, 0)]
    store.add_usage(rows, keep_after=0.0, max_rows=1000)
    store.close()
    return cfg, sd


def test_tune_json_proposes_for_trusted_agents_only(world: tuple[Path, Path]) -> None:
    cfg, sd = world
    r = runner.invoke(app, ["tune", str(cfg), "--state-dir", str(sd), "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    by = {a["agent"]: a for a in out["agents"]}
    assert by["small"]["proposed_bytes"] == 768 * MIB and by["small"]["trusted"]
    assert by["small"]["freed_bytes"] == int(1.5 * GIB) - 768 * MIB
    assert by["big"]["proposed_bytes"] is None and "too little history" in by["big"]["reason"]
    assert out["total_before_bytes"] == int(4.5 * GIB)
    assert out["total_after_bytes"] == 768 * MIB + 3 * GIB
    assert out["gpus"][0]["text"].startswith("frees 768.0 MiB on gpu0")
    assert "tuned" not in out  # no --apply: nothing written
    assert not (sd / "tuned_limits.json").exists()


def test_tune_table_and_since(world: tuple[Path, Path]) -> None:
    cfg, sd = world
    r = runner.invoke(app, ["tune", str(cfg), "--state-dir", str(sd)])
    assert r.exit_code == 0, r.output
    assert "total allocation: 4.50 GiB now → 3.75 GiB proposed" in r.output
    assert "too little history to trust" in r.output
    recent = runner.invoke(app, ["tune", str(cfg), "--state-dir", str(sd), "--since", "1m", "--json"])
    small = next(a for a in json.loads(recent.stdout)["agents"] if a["agent"] == "small")
    assert small["windows"] < 20 and small["proposed_bytes"] is None


@pytest.mark.parametrize("since", ["soon", "-5m", "0s", "3 fortnights"])
def test_bad_since_is_a_usage_error(world: tuple[Path, Path], since: str) -> None:
    cfg, sd = world
    r = runner.invoke(app, ["tune", str(cfg), "--state-dir", str(sd), "--since", since])
    assert r.exit_code == 2
    assert ("--since" in r.output and "duration" in r.output) or "longer than zero" in r.output


def test_no_history_and_no_api_are_clear(
    world: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg, sd = world
    r = runner.invoke(app, ["tune", str(cfg), "--state-dir", str(tmp_path / "empty")])
    assert r.exit_code == 1 and "no usage history" in r.output and "colo up" in r.output
    monkeypatch.setattr("colo.supervise.statedir.running_orchestrator", lambda sd: 4242)  # up, but no API
    r = runner.invoke(app, ["tune", str(cfg), "--state-dir", str(sd), "--apply"])
    assert r.exit_code == 1 and "serves no HTTP API" in r.output
    assert not (sd / "tuned_limits.json").exists()


class FakeClient:
    """Stands in for the running orchestrator's API client: what ``POST /tune`` would get and answer."""

    def __init__(self) -> None:
        self.tuned: list[list[dict[str, Any]]] = []

    def __enter__(self) -> FakeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def tune(self, changes: list[dict[str, Any]]) -> dict[str, Any]:
        self.tuned.append(changes)
        return {"tuned": sorted(c["agent"] for c in changes), "applied": {"restarted": ["small"], "started": [],
                "stopped": [], "unchanged": ["big"], "left_out": []}}


def test_apply_asks_the_running_orchestrator_to_record_and_roll_out(
    world: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg, sd = world
    client = FakeClient()
    monkeypatch.setattr("colo.api.client.orchestrator_client", lambda sd, **kw: client)
    monkeypatch.setattr("colo.supervise.statedir.running_orchestrator", lambda sd: 4242)
    r = runner.invoke(app, ["tune", str(cfg), "--state-dir", str(sd), "--apply", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["tuned"] == ["small"] and out["applied"]["restarted"] == ["small"]
    (changes,) = client.tuned
    assert [(c["agent"], c["limit_bytes"], c["current_bytes"], c["current_source"]) for c in changes] == [
        ("small", 768 * MIB, int(1.5 * GIB), "policy")
    ]
    assert not (sd / "tuned_limits.json").exists()  # the orchestrator writes it, not the CLI


def test_apply_without_an_orchestrator_writes_under_the_lock(world: tuple[Path, Path]) -> None:
    cfg, sd = world
    r = runner.invoke(app, ["tune", str(cfg), "--state-dir", str(sd), "--apply"])
    assert r.exit_code == 0, r.output
    assert "colo is not running: `colo up` plans with them" in r.output
    entry = limits_file.load(sd / "tuned_limits.json")["small"]
    assert entry.limit_bytes == 768 * MIB and entry.previous_limit_bytes == int(1.5 * GIB)
    assert limits_file.lock_path(sd / "tuned_limits.json").exists()
    # colo plan now shows where each limit came from
    p = runner.invoke(app, ["plan", str(cfg), "--state-dir", str(sd)])
    assert p.exit_code == 0, p.output
    assert "limit from" in p.output and "tuned" in p.output and "peak 700.0 MiB over 20 windows" in p.output
    assert limits_file.applicable(load_config(cfg), limits_file.load(sd / "tuned_limits.json"))["small"].limit_bytes == 768 * MIB


def test_apply_waits_for_a_rollback_that_holds_the_lock_and_keeps_it(world: tuple[Path, Path]) -> None:
    """The cross-process case: `colo tune --apply` (no orchestrator) while a rollback of another agent is
    being written under the file's lock. The tune waits for the lock and reads the file inside it: both
    changes are kept."""
    cfg, sd = world
    path = sd / "tuned_limits.json"
    key = limits_file.agent_key(load_config(cfg), "big")
    limits_file.update(path, lambda e: {"big": limits_file.TunedEntry(int(2.5 * GIB), 2 * GIB, 3 * GIB, key)})
    result: list[Any] = []
    with limits_file.locked(path):  # the rollback's read-modify-write, as the orchestrator does it
        tune = threading.Thread(
            target=lambda: result.append(runner.invoke(app, ["tune", str(cfg), "--state-dir", str(sd), "--apply"]))
        )
        tune.start()
        tune.join(0.5)
        assert tune.is_alive() and not result  # it waits for the lock
        entries = limits_file.load(path)
        limits_file.save(path, {**entries, "big": replace(entries["big"], rolled_back_at=123.0)})
    tune.join(30)
    assert result and result[0].exit_code == 0, result[0].output if result else "tune did not finish"
    entries = limits_file.load(path)
    assert entries["big"].rolled_back_at == 123.0  # the rollback was not lost
    assert entries["small"].limit_bytes == 768 * MIB  # nor the tuning


def test_advise_reads_the_history(world: tuple[Path, Path]) -> None:
    cfg, sd = world
    r = runner.invoke(app, ["advise", str(cfg), "--state-dir", str(sd), "--json"])
    assert r.exit_code == 0, r.output
    advice = json.loads(r.stdout)
    text = " ".join(advice["notes"] + [x["text"] for x in advice["reasons"]])
    assert "small never approaches its limit: peak 700.0 MiB of 1.5 GiB (46 %)" in text
    assert "no window" in text and "more than 1 busy" in text
    r = runner.invoke(app, ["advise", str(cfg), "--state-dir", str(sd), "--since", "nope"])
    assert r.exit_code == 2
