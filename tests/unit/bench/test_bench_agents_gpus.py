"""``colo bench agents`` across GPUs (issue 23, item 4): each agent's GPU from colo's store, each GPU's
aggregate and the sum over the GPUs, in the terminal's table, the Markdown report and ``--json``
(``settings.by_gpu``). Fake agents on CPU; the same on two real GPUs is in ``tests/gpu/test_two_gpus_gpu.py``
(not yet run on a GPU)."""

from __future__ import annotations

import json
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from colo.bench.agents_report import ALL_GPUS, gpu_rows, gpu_totals, gpu_totals_of, markdown
from colo.bench.agents_run import AgentsBench, measure, with_recorded
from colo.bench.loads.agents import AgentTarget, RequestShape
from colo.bench.report import load_json, to_json
from colo.bench.results import BenchResult, PointResult
from colo.cli.main import app
from colo.supervise.snapshots import AgentStatus
from colo.supervise.state import AgentState
from colo.supervise.statedir import StateDirPaths
from colo.supervise.store import AgentRecord, Store

FAKE_AGENT = Path(__file__).with_name("fake_agent.py")
SHAPE = (RequestShape(None, 2, 4),)
#: agent -> the GPU key colo's store records for it: two on GPU 0, one on GPU 1
PLACED = {"a": "local:0", "b": "local:0", "c": "local:1"}


def recorded_store(state_dir: Path, placed: dict[str, str]) -> None:
    """A state dir whose store says where each agent runs (as ``colo up`` records it)."""
    store = Store(StateDirPaths(state_dir).db)
    try:
        for i, (name, gpu) in enumerate(sorted(placed.items())):
            store.save_agent(
                AgentRecord(
                    AgentStatus(name, AgentState.RUNNING, 500 + i, gpu, f"GPU-{gpu}", 1 << 30, 1 << 29, "medium", 0)
                )
            )
    finally:
        store.close()


def test_with_recorded_takes_each_agents_gpu_from_the_store(tmp_path: Path) -> None:
    recorded_store(tmp_path, PLACED)
    targets = [AgentTarget(n, f"http://{n}:1", SHAPE) for n in ("a", "c", "elsewhere")]
    got = {t.name: (t.gpu, t.pid) for t in with_recorded(targets, tmp_path)}
    assert got == {"a": ("local:0", 500), "c": ("local:1", 502), "elsewhere": (None, None)}


def test_a_point_sums_each_gpus_agents_and_all_of_them() -> None:
    rows = {"a": 2, "b": 2, "c": 4}  # rows per request: c's GPU answers as many sequences as a's and b's together
    targets = [AgentTarget(n, f"http://{n}:1", (RequestShape(None, r, 4),), gpu=PLACED[n]) for n, r in rows.items()]
    bench = AgentsBench("t", None, tuple(targets), window_secs=0.3, warmup_secs=0.0)
    transport = httpx.MockTransport(lambda r: httpx.Response(200, json={}))
    point = measure(targets, 1, bench, None, mode="mps", transport=transport)
    assert {i.label: i.info["gpu"] for i in point.instances} == PLACED
    g0, g1, everything = gpu_totals(point)
    assert (g0.gpu, g0.agents, g1.gpu, g1.agents) == ("local:0", ("a", "b"), "local:1", ("c",))
    assert everything.gpu == ALL_GPUS and everything.agents == ("a", "b", "c")
    assert g0.seq_per_sec > 0 and g1.seq_per_sec > 0
    assert everything.seq_per_sec == pytest.approx(g0.seq_per_sec + g1.seq_per_sec)
    assert everything.seq_per_sec == pytest.approx(point.aggregate_per_sec)
    assert everything.requests_per_sec == pytest.approx(g0.requests_per_sec + g1.requests_per_sec)
    assert everything.hard_errors == 0 and everything.p99_secs is not None
    # the JSON (settings.by_gpu) and the table say the same; a reloaded report without latency lists too
    result = BenchResult("t", "agents", (point,), settings={"by_gpu": gpu_totals_of([point])})
    (entry,) = result.settings["by_gpu"]
    assert [g["gpu"] for g in entry["gpus"]] == ["local:0", "local:1"] and entry["all"]["agents"] == ["a", "b", "c"]
    again = load_json(to_json([result]))[0]
    assert gpu_rows(again) == gpu_rows(result)
    assert [r[2] for r in gpu_rows(result)] == ["local:0", "local:1", "**all GPUs**"]
    assert "Per GPU" in "\n".join(markdown(result))


def test_without_known_gpus_or_on_one_gpu_there_is_no_per_gpu_table() -> None:
    transport = httpx.MockTransport(lambda r: httpx.Response(200, json={}))

    def point_of(gpu: str | None) -> PointResult:
        targets = [AgentTarget(n, f"http://{n}:1", SHAPE, gpu=gpu) for n in "ab"]
        bench = AgentsBench("t", None, tuple(targets), window_secs=0.1, warmup_secs=0.0)
        return measure(targets, 1, bench, None, mode="mps", transport=transport)

    point = point_of(None)
    assert gpu_totals(point) == () and gpu_totals_of([point]) == []
    point = point_of("local:0")
    assert [t.gpu for t in gpu_totals(point)] == ["local:0", ALL_GPUS]  # in the JSON
    assert gpu_rows(BenchResult("t", "agents", (point,))) == []  # the point table says it all


@pytest.fixture()
def fake_agents() -> Iterator[dict[str, str]]:
    """Three fake agents served in threads; yields name -> base URL."""
    sys.path.insert(0, str(FAKE_AGENT.parent))
    try:
        import fake_agent as module
    finally:
        sys.path.remove(str(FAKE_AGENT.parent))
    servers = {}
    for name in PLACED:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        servers[name] = module.serve(port)
        threading.Thread(target=servers[name].serve_forever, daemon=True).start()
    yield {n: f"http://127.0.0.1:{s.server_address[1]}" for n, s in servers.items()}
    for s in servers.values():
        s.shutdown()
        s.server_close()


def test_cli_attached_reports_each_gpu_and_the_sum_in_the_table_and_json(
    fake_agents: dict[str, str], tmp_path: Path
) -> None:
    state = tmp_path / "state"
    recorded_store(state, PLACED)
    attach = ",".join(f"{n}={u}" for n, u in fake_agents.items())
    args = ["bench", "agents", "--attach", attach, "--state-dir", str(state), "--mode", "mps", "-n", "1,2"]
    args += ["--duration", "0.3", "--warmup", "0", "--out", str(tmp_path / "out")]
    table = CliRunner().invoke(app, args)
    assert table.exit_code == 0, table.output
    assert "per GPU" in table.output and "all GPUs" in table.output and "local:1" in table.output
    out = CliRunner().invoke(app, [*args, "--json"])
    assert out.exit_code == 0, out.output
    (run,) = json.loads(out.stdout)["runs"]
    by_gpu = run["settings"]["by_gpu"]
    assert [(d["mode"], d["clients"]) for d in by_gpu] == [("mps", 1), ("mps", 2)]
    for d, point in zip(by_gpu, run["points"], strict=True):
        assert [(g["gpu"], g["agents"]) for g in d["gpus"]] == [("local:0", ["a", "b"]), ("local:1", ["c"])]
        assert d["all"]["seq_per_sec"] == pytest.approx(sum(g["seq_per_sec"] for g in d["gpus"]))
        assert d["all"]["seq_per_sec"] == pytest.approx(point["aggregate_per_sec"])
        assert all(g["seq_per_sec"] > 0 for g in d["gpus"])
    report = (tmp_path / "out").glob("agents*.md")
    assert any("Per GPU" in p.read_text() for p in report)
