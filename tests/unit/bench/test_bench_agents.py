"""colo bench agents: the load generator (httpx MockTransport), shapes, targets, memory against limits,
reports, and the command end to end — attached to a fake agent, and through a real `colo up --no-mps` whose
agents are fake agents (tests/unit/bench/fake_agent.py)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from colo.bench.agents_report import hard_errors, markdown, retry_after, within_limits
from colo.bench.agents_run import AgentsBench, config_targets, measure, request_shapes, run_agents_bench, url_targets
from colo.bench.loads.agents import RETRY_AFTER_KEY, TRANSPORT_KEY, AgentTarget, RequestShape, drive
from colo.bench.report import load_json, to_json
from colo.bench.results import BenchResult, InstanceResult, PointResult
from colo.cli.main import app
from colo.errors import UsageError
from colo.gpu.fake_nvml import FakeGpuBackend, fake_gpu
from colo.gpu.nvml import ClientProcess
from colo.spec.load import load_config
from scriptkit import load_script

FAKE_AGENT = Path(__file__).with_name("fake_agent.py")
runner = CliRunner()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture()
def fake_agent() -> Iterator[str]:
    """A fake agent served in a thread; yields its base URL."""
    sys.path.insert(0, str(FAKE_AGENT.parent))
    try:
        import fake_agent as module
    finally:
        sys.path.remove(str(FAKE_AGENT.parent))
    server = module.serve(_free_port(), shed_every=4)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_drive_counts_rows_and_sorts_errors() -> None:
    seen: list[dict[str, object]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        seen.append(body)
        host = request.url.host
        if host == "busy":
            return httpx.Response(503, headers={"Retry-After": "0"}, json={"error": "queue full"})
        if host == "broken":
            return httpx.Response(500, text="CUBLAS_STATUS_ALLOC_FAILED")
        if host == "down":
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(200, json={"outputs": []})

    shape = RequestShape("m", 4, 8)
    targets = [AgentTarget(h, f"http://{h}:1", (shape,)) for h in ("ok", "busy", "broken", "down")]
    # a 1 s window after 0.3 s of warm-up: long enough that every client lands requests in it on a busy machine
    loads, wall, cpu = drive(targets, 2, 1.0, warmup_secs=0.3, transport=httpx.MockTransport(handler))
    by = {ld.name: ld for ld in loads}
    assert 0 < wall < 5.0 and cpu >= 0  # the CPU is measured over (most of) the window
    ok = by["ok"]
    assert ok.requests > 0 and ok.sequences == 4 * ok.requests and not ok.errors
    assert ok.seq_per_sec == pytest.approx(ok.sequences / 1.0)
    assert by["busy"].requests == 0 and by["busy"].retry_after > 0 and by["busy"].hard_errors == 0
    assert set(by["busy"].errors) == {RETRY_AFTER_KEY}
    assert by["broken"].errors["500"] > 0 and "CUBLAS" in by["broken"].last_error
    assert by["down"].errors[TRANSPORT_KEY] > 0
    assert seen[0]["model"] == "m" and len(seen[0]["input_ids"]) == 4  # type: ignore[arg-type]
    assert {len(row) for row in seen[0]["input_ids"]} == {8}  # type: ignore[union-attr]


def test_shapes_clamp_to_each_models_worst_case(tmp_path: Path) -> None:
    cfg_path = tmp_path / "colo.yaml"
    cfg_path.write_text(
        "version: 1\n"
        "models:\n"
        "  roberta-base: {memory: 2GiB, batch_size: 4, max_seq_len: 512}\n"
        "  distilgpt2: {memory: 2GiB, batch_size: 32, max_seq_len: 64, new_tokens: 8}\n"
        "agents:\n"
        "  critic: {models: [roberta-base, distilgpt2], port: 9300}\n"
        "  scout: {models: [roberta-base]}\n"
    )
    cfg = load_config(cfg_path)
    assert request_shapes(cfg, "critic", batch=8, seq_len=128, new_tokens=16) == (
        RequestShape("roberta-base", 4, 128, None),
        RequestShape("distilgpt2", 8, 64, 8),
    )
    targets = config_targets(cfg, batch=8, seq_len=128, new_tokens=16)
    assert (targets[0].name, targets[0].url) == ("critic", "http://127.0.0.1:9300")
    assert [t.name for t in config_targets(cfg, batch=1, seq_len=1, new_tokens=1, only=("scout",))] == ["scout"]
    with pytest.raises(UsageError, match="no agent nobody"):
        config_targets(cfg, batch=1, seq_len=1, new_tokens=1, only=("nobody",))


def test_url_targets() -> None:
    shape = (RequestShape(None, 1, 4),)
    a, b = url_targets(["old=http://127.0.0.1:9101", "http://127.0.0.1:9102/"], shape)
    assert (a.name, a.infer_url) == ("old", "http://127.0.0.1:9101/infer")
    assert (b.name, b.health_url) == ("127.0.0.1:9102", "http://127.0.0.1:9102/health")
    assert "model" not in json.loads(shape[0].body())
    with pytest.raises(UsageError, match="http://HOST:PORT"):
        url_targets(["localhost:9101"], shape)


def test_peak_memory_by_pid_against_the_limit() -> None:
    gpu = fake_gpu()
    backend = FakeGpuBackend(
        [gpu],
        [
            ClientProcess(101, 0, gpu.uuid, 900 << 20, True),
            ClientProcess(102, 0, gpu.uuid, 1200 << 20, True),
        ],
    )
    targets = [
        AgentTarget("fits", "http://fits:1", (RequestShape("m", 1, 4),), pid=101, limit_bytes=1 << 30),
        AgentTarget("over", "http://over:1", (RequestShape("m", 1, 4),), pid=102, limit_bytes=1 << 30),
    ]
    bench = AgentsBench("t", None, tuple(targets), window_secs=0.2, warmup_secs=0.0)
    transport = httpx.MockTransport(lambda r: httpx.Response(200, json={}))
    point = measure(targets, 1, bench, backend, mode="mps", transport=transport)
    info = {i.label: i.info for i in point.instances}
    assert info["fits"]["peak_memory_bytes"] == 900 << 20 and info["fits"]["within_limit"] is True
    assert info["over"]["within_limit"] is False and within_limits(point) is False
    assert point.load["memory_samples"] >= 2 and point.load["cpu_cores_used"] >= 0


def test_attached_run_report_and_json(fake_agent: str, tmp_path: Path) -> None:
    targets = url_targets([f"a={fake_agent}"], (RequestShape(None, 2, 4),))
    bench = AgentsBench(
        "attached",
        None,
        targets,
        clients=(1, 2),
        modes=("mps",),
        window_secs=0.3,
        warmup_secs=0.05,
        lone_secs=0.2,
        attached=True,
    )
    result = run_agents_bench(bench, backend=None)
    assert [(p.mode, p.concurrency) for p in result.points] == [("mps", 1), ("mps", 2)]
    p = result.points[1]
    assert p.aggregate_per_sec > 0 and hard_errors(p) == 0 and retry_after(p) > 0  # every 4th: 503 Retry-After
    assert result.settings["lone"]["mps"]["a"]["requests"] > 0
    again = load_json(to_json([result]))[0]
    assert again.points[1].load == p.load and again.points[1].instances[0].info["retry_after_503"] == retry_after(p)
    text = "\n".join(markdown(again))
    assert "| MPS | 2 |" in text and "A lone request" in text and "core" in text


def test_drive_spread_over_processes_shares_one_window(fake_agent: str) -> None:
    # In a child interpreter: the worker pool's helper processes (multiprocessing's resource tracker) must
    # not become children of the test process (the harness tests check it has none).
    code = (
        "import json, sys\n"
        "from colo.bench.agents_run import url_targets\n"
        "from colo.bench.loads.agents import RequestShape, drive_spread\n"
        "t = url_targets(sys.argv[1:], (RequestShape(None, 1, 4),))\n"
        "d = drive_spread(t, 2, 0.5, warmup_secs=0.1, processes=2)\n"
        "print(json.dumps({'procs': d.processes, 'names': [x.name for x in d.loads], 'wall': d.wall_secs,\n"
        "  'ok': [x.requests > 0 and x.hard_errors == 0 for x in d.loads],\n"
        "  'busiest': d.max_process_cores, 'cores': d.cpu_secs / d.wall_secs}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, f"a={fake_agent}", f"b={fake_agent}"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    assert got["procs"] == 2 and got["names"] == ["a", "b"] and all(got["ok"])
    assert 0.3 < got["wall"] < 2.0 and got["busiest"] <= got["cores"] + 1e-9


def test_cli_attached_and_usage_errors(fake_agent: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    r = runner.invoke(
        app,
        [
            "bench",
            "agents",
            "--attach",
            f"a={fake_agent}",
            "--mode",
            "timeslice",
            "-n",
            "1",
            "--duration",
            "0.3",
            "--warmup",
            "0",
            "--out",
            str(out),
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    run = json.loads(r.stdout)["runs"][0]
    assert run["workload"] == "agents" and run["points"][0]["instances"][0]["label"] == "a"
    assert sorted(p.name for p in out.iterdir()) == ["agents.json", "agents.md", "agents.png"]
    r = runner.invoke(app, ["bench", "agents", "--attach", fake_agent, "--out", str(out)])
    assert r.exit_code == 2 and "one of timeslice, mps" in r.output
    r = runner.invoke(app, ["bench", "agents", "--out", str(out)])
    assert r.exit_code == 2 and "give CONFIG" in r.output
    r = runner.invoke(app, ["bench", "agents", "--attach", "nohost", "--mode", "mps", "--out", str(out)])
    assert r.exit_code == 2 and "http://HOST:PORT" in r.output


def test_cli_starts_colo_up_per_mode_and_stops_it(tmp_path: Path) -> None:
    """The real `colo up --no-mps` (a child process) runs two fake agents; the bench waits for RUNNING,
    loads them, and leaves nothing running."""
    ports = [_free_port(), _free_port()]
    agents = "".join(
        f"  a{i}:\n    models: [m1]\n    port: {port}\n"
        f"    command: [{sys.executable}, {FAKE_AGENT}, '{port}']\n"
        f"    health: {{type: http, url: 'http://127.0.0.1:{port}/health', interval_secs: 0.5}}\n"
        for i, port in enumerate(ports)
    )
    config = tmp_path / "colo.yaml"
    config.write_text(
        "version: 1\ngpus:\n  - {name: H100, memory: 80GiB, count: 1}\n"
        "models:\n  m1: {memory: 1GiB, batch_size: 4, max_seq_len: 16, task: encoder}\n"
        f"agents:\n{agents}"
    )
    out = tmp_path / "out"
    r = runner.invoke(
        app,
        [
            "bench",
            "agents",
            str(config),
            "--mode",
            "timeslice",
            "-n",
            "2",
            "--duration",
            "0.4",
            "--warmup",
            "0.1",
            "--out",
            str(out),
        ],
    )
    assert r.exit_code == 0, r.output
    data = json.loads((out / "agents.json").read_text())["runs"][0]
    point = data["points"][0]
    assert {i["label"] for i in point["instances"]} == {"a0", "a1"}
    assert all(i["info"]["limit_bytes"] and i["pid"] for i in point["instances"])  # from colo's store
    assert data["settings"]["shapes"]["a0"] == [{"model": "m1", "rows": 4, "seq_len": 16, "new_tokens": None}]
    for port in ports:  # stopped
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=1.0)


def _agents_result(rates: dict[tuple[str, int], float], *, lone_p50: float, errors: int = 0) -> BenchResult:
    points = tuple(
        PointResult(
            mode,
            n,
            (
                InstanceResult(
                    0,
                    "memory",
                    7,
                    "seq",
                    rate * 10,
                    10.0,
                    (0.01, 0.02),
                    info={
                        "requests": 2,
                        "hard_errors": errors,
                        "retry_after_503": 1,
                        "errors": {"500": errors},
                        "limit_bytes": 2 << 30,
                        "peak_memory_bytes": 1 << 30,
                        "within_limit": True,
                    },
                ),
            ),
            workload="agents",
            load={"cpu_cores_used": 0.3, "max_process_cores": 0.2, "processes": 2.0, "host_cpus": 16.0},
        )
        for (mode, n), rate in rates.items()
    )
    lone = {"mps": {"memory": {"requests": 50, "p50_secs": lone_p50, "p99_secs": lone_p50, "errors": 0}}}
    return BenchResult("t", "agents", points, settings={"lone": lone})


def test_issue_13_targets_judged(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """scripts/agents_targets.py (gpu_agents_bench.sh's judge) on results built here."""
    targets = load_script("agents_targets")
    judge, targets_main = targets.judge, targets.main
    new = _agents_result({("mps", 3): 10_000.0, ("timeslice", 3): 5_000.0, ("mps", 1): 4_000.0}, lone_p50=0.004)
    old = _agents_result({("mps", 3): 4_000.0}, lone_p50=0.003)
    verdicts = {t.name: t.passed for t in judge(new, old, clients=3, batch_wait_ms={"memory": 2.0})}
    assert all(verdicts.values()), verdicts
    assert judge(new, None)[2].passed is None  # no old build: not judged
    slow = _agents_result({("mps", 3): 10_000.0}, lone_p50=0.0065)
    assert not judge(slow, old, batch_wait_ms={"memory": 2.0})[4].passed  # +3.5 ms > 2 ms
    (tmp_path / "new.json").write_text(to_json([_agents_result({("mps", 3): 1.0}, lone_p50=0.01, errors=3)]))
    (tmp_path / "old.json").write_text(to_json([old]))
    code = targets_main(
        [str(tmp_path / "new.json"), "--old", str(tmp_path / "old.json"), "--summary", str(tmp_path / "s.json")]
    )
    out = capsys.readouterr().out
    assert code == 1 and "GPU-RESULT errors other than 503 Retry-After: FAIL" in out and "| old | MPS | 3 |" in out
    assert json.loads((tmp_path / "s.json").read_text())["targets"][0]["passed"] is False
    assert targets_main([str(tmp_path / "missing.json")]) == 2


def test_issue_22_http_targets_judged_against_the_in_process_harness(tmp_path: Path) -> None:
    """agents_targets --inprocess: HTTP at 16 clients against the bare forwards' MPS aggregate, lone p50."""
    targets = load_script("agents_targets")
    new = _agents_result({("mps", 16): 7_000.0}, lone_p50=0.0012)
    bare = _agents_result({("mps", 9): 10_000.0, ("timeslice", 9): 3_000.0}, lone_p50=0.0)
    share, lone = targets.judge_http(new, bare, ["memory"])
    assert share.passed and "70.0%" in share.detail and lone.passed and "1.20 ms" in lone.detail
    slow = _agents_result({("mps", 16): 5_000.0}, lone_p50=0.002)
    assert [t.passed for t in targets.judge_http(slow, bare, ["memory"])] == [False, False]
    assert targets.judge_http(slow, bare, ["analyst"])[1].passed is None  # no lone figure: not judged
    (tmp_path / "new.json").write_text(to_json([new]))
    (tmp_path / "bare.json").write_text(to_json([bare]))
    assert targets.main([str(tmp_path / "new.json"), "--inprocess", str(tmp_path / "bare.json"),
                         "--lone-agents", "memory", "--clients", "16"]) == 0


def test_cli_mode_auto_runs_colo_up_with_mps_auto_and_compares_with_time_slicing(tmp_path: Path) -> None:
    """`--mode timeslice,auto`: one fake agent, `colo up --no-mps` then `colo up --mps auto` (the plan runs a
    lone agent without MPS); the report compares auto with time-slicing."""
    port = _free_port()
    config = tmp_path / "colo.yaml"
    config.write_text(
        "version: 1\ngpus:\n  - {name: H100, memory: 80GiB, count: 1}\n"
        "models:\n  m1: {memory: 1GiB, batch_size: 4, max_seq_len: 16, task: encoder}\n"
        f"agents:\n  a0:\n    models: [m1]\n    port: {port}\n"
        f"    command: [{sys.executable}, {FAKE_AGENT}, '{port}']\n"
        f"    health: {{type: http, url: 'http://127.0.0.1:{port}/health', interval_secs: 0.5}}\n"
    )
    out = tmp_path / "out"
    args = ["bench", "agents", str(config), "--mode", "timeslice,auto", "-n", "1", "--duration", "0.4",
            "--warmup", "0.1", "--out", str(out)]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "mps: auto: colo up" in r.output and "mps: auto against time-slicing" in r.output
    data = json.loads((out / "agents.json").read_text())["runs"][0]
    assert [(p["mode"], p["concurrency"]) for p in data["points"]] == [("timeslice", 1), ("auto", 1)]
    (auto,) = [s for s in data["summary"] if s["mode"] == "auto"]
    assert auto["over_timeslice"] is not None and auto["over_timeslice"] > 0
    assert runner.invoke(app, ["bench", "agents", str(config), "--mode", "sometimes"]).exit_code == 2


def test_auto_rows_say_whether_auto_is_within_2_percent() -> None:
    from colo.bench.agents_report import auto_rows

    close = _agents_result({("timeslice", 1): 1000.0, ("auto", 1): 990.0, ("mps", 1): 860.0}, lone_p50=0.004)
    assert auto_rows(close) == [["1", "990.0", "1,000", "0.990×", "yes"]]
    far = _agents_result({("timeslice", 1): 1000.0, ("auto", 1): 900.0}, lone_p50=0.004)
    assert auto_rows(far)[0][-1] == "**no**"
    assert auto_rows(_agents_result({("mps", 1): 1.0}, lone_p50=0.004)) == []
