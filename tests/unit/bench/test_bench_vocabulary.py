"""One vocabulary for bench/: the co-location modes, the number formats, the option parsers, what each mode
does to an instance's environment, and the bench suite's plans."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from colo.bench import format as fmt
from colo.bench import options
from colo.bench.activity import GpuActivity
from colo.bench.modes import Mode, check_modes, label
from colo.bench.mps import MpsClientLimits, colocation_env
from colo.bench.results import BenchResult, InstanceResult, PointResult
from colo.errors import ConfigError, MpsError, UsageError


def test_modes_are_their_json_values_and_read_back_as_modes() -> None:
    assert json.dumps({"mode": Mode.TIMESLICE}) == '{"mode": "timeslice"}'
    point = PointResult(Mode.MPS, 2, ())
    back = PointResult.from_dict(json.loads(json.dumps(point.to_dict())))
    assert back.mode is Mode.MPS
    assert label(Mode.AUTO) == "mps: auto" and label("merged") == "merged batch" and label("other") == "other"
    assert check_modes(["timeslice", "mps"]) == [Mode.TIMESLICE, Mode.MPS]
    with pytest.raises(UsageError, match="unknown mode 'auto'; use timeslice, mps"):
        check_modes(["auto"])  # auto is `colo bench agents`'s only


def test_formats() -> None:
    assert (fmt.num(12.345), fmt.num(12345.6), fmt.num(None), fmt.num(float("nan"))) == ("12.3", "12,346", "–", "–")
    assert fmt.num(3.14159, 3) == "3.142"
    assert (fmt.pct(0.874), fmt.pct(None)) == ("87 %", "–")
    assert (fmt.ms(0.00425), fmt.ms(0.0425), fmt.ms(0.425), fmt.ms(float("inf"))) == ("4.25", "42.5", "425", "–")
    assert (fmt.ratio(1.724), fmt.ratio(None)) == ("1.72×", "–")
    assert (fmt.size(1536 << 20), fmt.size(None)) == ("1.5 GiB", "–")
    assert fmt.markdown_table(["a", "b"], [["1", "2"]]) == ["| a | b |", "|---|---|", "| 1 | 2 |"]


def test_point_line_and_sm_busy() -> None:
    inst = InstanceResult(0, "i0", 1, "seq", 100.0, 10.0, (0.004, 0.006))
    point = PointResult(Mode.MPS, 1, (inst,), gpu=GpuActivity(0, "H100", ()))
    assert fmt.point_line(point) == "mps N=1: aggregate 10.0 seq/s, individual 10.0, p50 5.00 ms"
    assert fmt.sm_busy(point) == "–"  # no samples, nothing to say


def test_option_parsers_name_the_option_and_the_value() -> None:
    assert options.parse_int_list("1, 2,8", "--concurrency") == (1, 2, 8)
    with pytest.raises(UsageError, match="--clients '0,3': each value must be 1..64"):
        options.parse_int_list("0,3", "--clients")
    with pytest.raises(UsageError, match="whole numbers"):
        options.parse_int_list("two", "--clients")
    assert options.parse_modes("") == (Mode.TIMESLICE,)
    assert options.parse_modes("mps, timeslice") == (Mode.MPS, Mode.TIMESLICE)
    assert options.parse_agent_modes("timeslice,auto") == (Mode.TIMESLICE, Mode.AUTO)
    with pytest.raises(UsageError, match="unknown mode 'external'; use timeslice, mps, auto"):
        options.parse_agent_modes("external")


def test_load_results_reads_a_bench_json_or_says_which_file(tmp_path: Path) -> None:
    from colo.bench.report import to_json

    good = tmp_path / "bench.json"
    good.write_text(to_json([BenchResult("t", "cpu", (PointResult(Mode.TIMESLICE, 1, ()),))]))
    assert options.load_results(good)[0].points[0].mode is Mode.TIMESLICE
    for text in ('{"runs": []}', "[1, 2]", "not json"):
        bad = tmp_path / "bad.json"
        bad.write_text(text)
        with pytest.raises(ConfigError, match="not a colo bench result") as info:
            options.load_results(bad)
        assert str(bad) in str(info.value) or info.value.source == str(bad)
    with pytest.raises(ConfigError):
        options.load_results(tmp_path / "missing.json")


def test_timeslice_points_at_an_empty_private_pipe_dir_that_is_removed(tmp_path: Path) -> None:
    with colocation_env(Mode.TIMESLICE, "GPU-1", tmp_root=str(tmp_path)) as env:
        pipe = Path(env["CUDA_MPS_PIPE_DIRECTORY"])
        assert pipe.is_dir() and not os.listdir(pipe) and env["CUDA_VISIBLE_DEVICES"] == "GPU-1"
    assert not pipe.exists() and not os.listdir(tmp_path)
    with colocation_env(Mode.EXTERNAL, None) as env:
        assert env == {}


def test_mps_without_a_gpu_is_an_mps_error_and_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(MpsError, match="needs a GPU"), colocation_env(Mode.MPS, None, tmp_root=str(tmp_path)):
        pass
    assert not os.listdir(tmp_path)
    with pytest.raises(UsageError, match="unknown mode 'merged'"), colocation_env(Mode.MERGED, None):
        pass


def test_client_limits_env() -> None:
    limits = MpsClientLimits(pinned_mem_limit_bytes=2 << 30, active_thread_pct=50)
    env = limits.env()
    assert env["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"] == "0=2048M" and env["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] == "50"
    with pytest.raises(UsageError, match="active thread percentage 0 must be 1..100"):
        MpsClientLimits(active_thread_pct=0).env()


def test_suite_plans() -> None:
    from colo.bench.suite import decode_plans, encoder_plans, hf_decode_plans, main, newsroom_plans

    enc = encoder_plans(3.0)
    assert [p.base.kind for p in enc if p.base] == ["encoder", "encoder"]
    assert all(p.modes == (Mode.TIMESLICE, Mode.MPS) and p.base and p.base.duration_secs == 3.0 for p in enc)
    assert decode_plans(2.0)[0].base is not None and hf_decode_plans(2.0)[0].base is not None
    (newsroom,) = newsroom_plans(2.0)
    assert len(newsroom.fixed) == 9 and newsroom.steps() == [(Mode.TIMESLICE, 9), (Mode.MPS, 9)]
    with pytest.raises(SystemExit) as exit_info:
        main(["warp", "--out", "x"])
    assert exit_info.value.code == 2
