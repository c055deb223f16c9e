"""The run commands end to end on CPU with real processes (no GPU, no MPS): the flows the GPU drills use.

``colo up`` runs as a subprocess (with its HTTP API) and two tiny HTTP agents; the test then drives ``status --json``,
``agent restart``, ``apply``, SIGKILL of the orchestrator + ``up`` again (adoption), ``logs`` and ``down``.
Also the views without a running orchestrator (CliRunner).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from colo.cli.main import app
from testkit import child_env, free_port, wait_for

ROOT = Path(__file__).resolve().parents[3]
COLO = [sys.executable, "-c", "import sys; from colo.cli.entry import main; sys.argv[0] = 'colo'; main()"]
AGENT = (
    "import http.server, sys\n"
    "class H(http.server.BaseHTTPRequestHandler):\n"
    "    def do_GET(self):\n"
    "        self.send_response(200); self.end_headers(); self.wfile.write(b'ok')\n"
    "    def log_message(self, *a): pass\n"
    "print('serving', flush=True)\n"
    "http.server.HTTPServer(('127.0.0.1', int(sys.argv[1])), H).serve_forever()\n"
)


def write_config(path: Path, ports: dict[str, int], margin_b: str = "512MiB") -> Path:
    agents = {}
    for name, port in ports.items():
        if name == "api":
            continue
        agents[name] = {
            "models": ["m"],
            "margin": margin_b if name == "b" else "512MiB",
            "command": [sys.executable, str(path.parent / "agent.py"), str(port)],
            "health": {"type": "http", "url": f"http://127.0.0.1:{port}/health", "interval_secs": 1},
            "restart": {"backoff_initial_secs": 0.2, "stop_wait_secs": 3},
        }
    doc = {"version": 1, "gpus": [{"name": "X", "memory": "24GiB"}], "models": {"m": {"memory": "1GiB"}}}
    doc["agents"] = agents
    doc["api"] = {"host": "127.0.0.1", "port": ports["api"]}  # actions reach the orchestrator over HTTP
    path.write_text(yaml.safe_dump(doc))
    return path


def colo(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*COLO, *args], env=child_env(), capture_output=True, text=True, timeout=timeout)




@pytest.fixture
def world(tmp_path: Path) -> Iterator[dict[str, Any]]:
    (tmp_path / "agent.py").write_text(AGENT)
    ports = {"a": free_port(), "b": free_port(), "api": free_port()}
    box: dict[str, Any] = {
        "sd": tmp_path / "state",
        "cfg": write_config(tmp_path / "colo.yaml", ports),
        "ports": ports,
        "procs": [],
        "tmp": tmp_path,
    }
    try:
        yield box
    finally:
        colo("down", "--state-dir", str(box["sd"]), "--timeout", "20")
        for p in box["procs"]:
            if p.poll() is None:
                p.kill()
            p.wait(5)
            if p.stdout:
                p.stdout.close()


def start(box: dict[str, Any], cfg: Path) -> subprocess.Popen[str]:
    p = subprocess.Popen(
        [*COLO, "up", str(cfg), "--state-dir", str(box["sd"])],
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    box["procs"].append(p)
    return p


def agents(box: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out = colo("status", "--json", "--state-dir", str(box["sd"]))
    assert out.returncode == 0, out.stderr
    return {a["name"]: a for a in json.loads(out.stdout)["agents"]}


def running(box: dict[str, Any]) -> dict[str, dict[str, Any]] | None:
    a = agents(box)
    return a if len(a) == 2 and all(x["state"] == "RUNNING" for x in a.values()) else None


def test_up_restart_apply_kill_adopt_down(world: dict[str, Any]) -> None:
    sd = world["sd"]
    start(world, world["cfg"])
    first = wait_for(lambda: running(world))
    assert first, agents(world)
    pids = {n: a["pid"] for n, a in first.items()}

    out = colo("agent", "restart", "a", "--state-dir", str(sd), "--json")
    assert out.returncode == 0, out.stderr
    again = wait_for(lambda: (r := running(world)) and r["a"]["pid"] != pids["a"] and r)
    assert again and again["b"]["pid"] == pids["b"] and again["a"]["restarts"] == 1
    pids = {n: a["pid"] for n, a in again.items()}

    new_cfg = write_config(world["tmp"] / "colo2.yaml", world["ports"], margin_b="1GiB")
    out = colo("apply", str(new_cfg), "--state-dir", str(sd), "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["restarted"] == ["b"]
    again = wait_for(lambda: (r := running(world)) and r["b"]["pid"] != pids["b"] and r)
    assert again and again["a"]["pid"] == pids["a"]
    assert again["b"]["limit_bytes"] == 2 * 1024**3
    pids = {n: a["pid"] for n, a in again.items()}

    huge = write_config(world["tmp"] / "huge.yaml", world["ports"], margin_b="40GiB")
    out = colo("apply", str(huge), "--state-dir", str(sd))
    assert out.returncode == 1 and "does not fit" in out.stderr and "nothing was changed" in out.stderr
    assert {n: a["pid"] for n, a in agents(world).items()} == pids

    orch_pid = json.loads(colo("status", "--json", "--state-dir", str(sd)).stdout)["orchestrator"]["pid"]
    os.kill(orch_pid, signal.SIGKILL)
    assert wait_for(lambda: json.loads(colo("status", "--json", "--state-dir", str(sd)).stdout)["orchestrator"] is None)
    start(world, new_cfg)
    adopted = wait_for(lambda: (r := running(world)) and colo_up(world) and r)
    assert adopted and {n: a["pid"] for n, a in adopted.items()} == pids

    logs = colo("logs", "a", "--state-dir", str(sd))
    assert logs.returncode == 0 and "serving" in logs.stdout

    down = colo("down", "--state-dir", str(sd))
    assert down.returncode == 0, down.stderr
    for pid in pids.values():
        assert wait_for(lambda pid=pid: not _alive(pid), timeout=10)
    assert json.loads(colo("status", "--json", "--state-dir", str(sd)).stdout)["orchestrator"] is None
    printed = world["procs"][-1].communicate(timeout=30)[0]  # the foreground `colo up` said what became of them
    assert "colo up: all 2 agents RUNNING" in printed, printed


def colo_up(box: dict[str, Any]) -> bool:
    return json.loads(colo("status", "--json", "--state-dir", str(box["sd"])).stdout)["orchestrator"] is not None


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def test_views_without_an_orchestrator(tmp_path: Path) -> None:
    runner = CliRunner()
    sd = str(tmp_path / "empty")
    res = runner.invoke(app, ["status", "--state-dir", sd])
    assert res.exit_code == 0 and "colo is not running" in res.output
    res = runner.invoke(app, ["status", "--json", "--state-dir", sd])
    assert json.loads(res.output)["orchestrator"] is None
    res = runner.invoke(app, ["agent", "restart", "x", "--state-dir", sd])
    assert res.exit_code == 1 and "not running" in res.output
    res = runner.invoke(app, ["logs", "x", "--state-dir", sd])
    assert res.exit_code == 2 and "no log for agent" in res.output
    res = runner.invoke(app, ["down", "--state-dir", sd])
    assert res.exit_code == 0 and "nothing is running" in res.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nagents: {}\nmodels: {}\n")
    res = runner.invoke(app, ["up", str(bad), "--state-dir", sd])
    assert res.exit_code == 2


def test_up_detached_reports_each_agents_first_outcome(world: dict[str, Any]) -> None:
    sd, tmp = world["sd"], world["tmp"]
    (tmp / "broken.py").write_text("import torch_that_is_not_installed\n")
    doc = yaml.safe_load(world["cfg"].read_text())
    doc["agents"]["b"]["command"] = [sys.executable, str(tmp / "broken.py")]
    cfg = tmp / "broken.yaml"
    cfg.write_text(yaml.safe_dump(doc))

    up = colo("up", str(cfg), "--detach", "--state-dir", str(sd))
    assert up.returncode == 3, up.stdout + up.stderr  # up, but not every agent RUNNING
    assert "colo up: 1 of 2 agents RUNNING" in up.stdout
    assert "b: crash-looping (exit code 1): ModuleNotFoundError: No module named 'torch_that_is_not_installed'" in (
        up.stdout
    )
    assert "the orchestrator keeps supervising them" in up.stdout
    b = agents(world)["b"]
    assert b["last_error_line"] == "ModuleNotFoundError: No module named 'torch_that_is_not_installed'"
    shown = colo("status", "--state-dir", str(sd))
    assert shown.returncode == 0 and "No module named 'torch_that_is_not_installed'" in shown.stdout
    log = (sd / "logs" / "orchestrator.log").read_text()
    assert "b: crash-looping" in log  # the orchestrator's log says so too
    assert colo("down", "--state-dir", str(sd)).returncode == 0

    up = colo("up", str(world["cfg"]), "--detach", "--json", "--state-dir", str(sd))
    assert up.returncode == 0, up.stdout + up.stderr
    report = json.loads(up.stdout)
    assert report["all_running"] and report["running"] == report["total"] == 2
    assert {a["name"]: a["outcome"] for a in report["agents"]} == {"a": "running", "b": "running"}
    assert "running in the background" in up.stderr


def test_status_shows_the_last_error_line_as_text(tmp_path: Path) -> None:
    from colo.supervise.snapshots import AgentStatus
    from colo.supervise.state import AgentState
    from colo.supervise.store import AgentRecord, Store

    sd = tmp_path / "state"
    store = Store(sd / "colo.db")
    line = "ValueError: bad [/x] [red]gone[/red] \x1b[2J"
    store.save_agent(
        AgentRecord(
            AgentStatus("b", AgentState.BACKOFF, None, None, None, 0, 0, "medium", 2, last_error="exit code 1",
                        last_error_line=line)
        )
    )
    store.close()
    res = CliRunner().invoke(app, ["status", "--state-dir", str(sd)], terminal_width=200)
    assert res.exit_code == 0, res.output
    assert "ValueError: bad [/x] [red]gone[/red] \\e[2J" in res.output and "exit code 1" in res.output
    res = CliRunner().invoke(app, ["status", "--json", "--state-dir", str(sd)])
    assert json.loads(res.output)["agents"][0]["last_error_line"] == line


def test_up_checks_the_built_in_agents_needs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from colo.cli import up_cmd

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name in ("torch", "transformers") else real(name, *a)
    )
    ran: list[Path] = []
    monkeypatch.setattr(up_cmd, "up_foreground", lambda cfg, path, sd, **kw: ran.append(path))
    sized = ROOT / "examples" / "newsroom" / "colo.sized.yaml"
    sd = str(tmp_path / "state")
    res = CliRunner().invoke(app, ["up", str(sized), "--state-dir", sd], terminal_width=400)
    assert res.exit_code == 2 and ran == []
    assert "built-in model agent" in res.output and "cannot import torch or transformers" in res.output
    assert "install -e '.[profile]' -c constraints.txt" in res.output and "--skip-needs-check" in res.output
    res = CliRunner().invoke(app, ["up", str(sized), "--state-dir", sd, "--skip-needs-check"])
    assert res.exit_code == 0, res.output
    assert ran == [sized]
    # Agents with their own command need nothing of colo's.
    own = write_config(tmp_path / "colo.yaml", {"a": free_port(), "api": free_port()})
    res = CliRunner().invoke(app, ["up", str(own), "--state-dir", sd])
    assert res.exit_code == 0, res.output
    assert ran == [sized, own]
