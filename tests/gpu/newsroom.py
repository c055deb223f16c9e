"""The sized newsroom (``examples/newsroom/colo.sized.yaml``), brought up once per GPU test session through the
real CLI and shared by every test that leaves it healthy.

``tests/gpu/conftest.py`` exposes a :class:`Newsroom` as the session fixture ``newsroom``: ``colo up CONFIG
--state-dir <short /tmp dir>`` in a subprocess (the foreground orchestrator, in its own session, its API on the
config's port), waited for until every agent is RUNNING and answers ``/infer``; torn down always (``colo
down``, what is left of the state dir killed, its MPS daemons quit; on a failure the logs are printed and
copied to ``$COLO_GPU_OUT/newsroom/``).

The config is a copy of the example under the state dir with every agent's port (and health URL) moved up by
:data:`PORT_OFFSET` (9301-9309): tests that start the example's agents on their own ports
(``test_launcher_gpu.py``) can run beside it in another lane of ``scripts/gpu_suite.sh``.

A test that breaks the newsroom calls :meth:`Newsroom.restore` before it returns, or runs last: the marker
``newsroom_order(n)`` orders the tests that use the fixture (default 0; drills 1 and 1b are -2 and -1, the
orchestrator's SIGKILL 1 — after every drill that kills an MPS process, since the new orchestrator is not the
MPS daemon's parent and cannot reap it — and ``colo down`` 2, last). A drill that wants a serving newsroom
calls :meth:`Newsroom.restore` first (it returns at once when every agent serves). Drill result lines keep
their format::

    GPU-RESULT drill=<id> name=<name> outcome=pass|fail seconds=S detect_s=D recover_s=R detail=...
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Collection, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml
from leftovers import MpsProc, Zombie, clean_state_dir, mps_processes, processes_mentioning, zombies

from colo.files import write_atomic
from newsroom_doc import moved_ports
from testkit import offline_child_env, wait_for

ROOT = Path(__file__).resolve().parents[2]
SIZED = ROOT / "examples" / "newsroom" / "colo.sized.yaml"
COLO = (sys.executable, "-c", "import sys; from colo.cli.entry import main; sys.argv[0] = 'colo'; main()")
PORT_OFFSET = 200
UP_TIMEOUT_SECS = 240.0
CHECK_INTERVAL_SECS = 0.2
INFER_BODY = json.dumps({"texts": ["colo drill"]}).encode()
#: The small ``/infer`` body per agent port: an agent whose first model generates also gets ``max_new_tokens: 1``
#: (an encoder refuses that field, 422). Filled by :class:`Newsroom` from its config.
BODIES: dict[int, bytes] = {}


def infer_body(doc: Mapping[str, Any], agent: str, text: str = "colo drill", new_tokens: int = 1) -> bytes:
    """The small ``/infer`` body for ``agent`` of a colo.yaml document: its first model's task decides whether
    ``max_new_tokens`` is sent."""
    first = doc["agents"][agent]["models"][0]
    task = ((doc.get("models") or {}).get(first) or {}).get("task", "encoder")
    body: dict[str, Any] = {"texts": [text]}
    if task in ("generator", "seq2seq"):
        body["max_new_tokens"] = new_tokens
    return json.dumps(body).encode()


def drill_result(
    drill: int | str,
    name: str,
    ok: bool,
    secs: float,
    detail: str = "",
    *,
    detect_s: float | None = None,
    recover_s: float | None = None,
) -> None:
    """Print a drill's one result line (``scripts/drills.py`` parses it)."""
    text = detail.replace("\n", " ")[: 600 if detect_s is not None else 300]
    figures = ""
    if detect_s is not None or recover_s is not None:
        d = f"{detect_s:.2f}" if detect_s is not None else "-"
        r = f"{recover_s:.2f}" if recover_s is not None else "-"
        figures = f" detect_s={d} recover_s={r}"
    print(
        f"GPU-RESULT drill={drill} name={name} outcome={'pass' if ok else 'fail'} seconds={secs:.1f}{figures}"
        f" detail={text}",
        flush=True,
    )


def infer_port_ok(port: int, timeout: float = 1.0) -> bool:
    """One small ``POST /infer`` to 127.0.0.1:``port`` answered 200 within ``timeout`` seconds."""
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/infer", data=BODIES.get(port, INFER_BODY), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return int(r.status) == 200
    except OSError:
        return False


def answering(ports: Mapping[str, int], timeout: float = 1.0) -> dict[str, bool]:
    """``infer_port_ok`` of every agent at once."""
    with ThreadPoolExecutor(max(1, len(ports))) as pool:
        oks = pool.map(lambda p: infer_port_ok(p, timeout), ports.values())
        return dict(zip(ports, oks, strict=True))


class Newsroom:
    """One running newsroom: its state dir, config copy, ports and the ways to look at it and drive it.

    Its config is ``source`` (a colo.yaml file), or ``doc`` (a colo.yaml document, e.g.
    ``newsroom_doc.two_newsrooms``) when given, with every agent's port moved by ``port_offset``. ``label``
    names the folder its logs are kept in under ``$COLO_GPU_OUT``."""

    def __init__(
        self,
        source: Path = SIZED,
        state_dir: Path | None = None,
        *,
        port_offset: int = PORT_OFFSET,
        api_port: int | None = None,
        doc: Mapping[str, Any] | None = None,
        label: str = "newsroom",
    ) -> None:
        self.state_dir = state_dir or Path(tempfile.mkdtemp(prefix="cn", dir="/tmp"))  # short: MPS sockets
        self.label = label
        doc = moved_ports(yaml.safe_load(source.read_text()) if doc is None else doc, port_offset)
        if api_port is not None:
            doc["api"] = {**(doc.get("api") or {}), "port": api_port}
        self.config = self.state_dir / "newsroom.yaml"
        write_atomic(self.config, yaml.safe_dump(doc, sort_keys=False))
        self.ports: dict[str, int] = {name: int(a["port"]) for name, a in doc["agents"].items()}
        self.doc: dict[str, Any] = doc
        BODIES.update({port: infer_body(doc, name) for name, port in self.ports.items()})
        self.api_url = f"http://127.0.0.1:{int((doc.get('api') or {}).get('port', 8014))}"
        self.procs: list[subprocess.Popen[bytes]] = []
        self.up_secs: float | None = None  # colo up -> every agent RUNNING and answering
        self.daemon_up_secs: float | None = None  # colo up -> its MPS control daemon seen
        self.failed_tests: list[str] = []  # set by conftest: the logs are kept when a test failed
        self.is_down = False

    # --- the CLI and the API ---------------------------------------------------------------------------

    def colo(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """``colo ARGS --state-dir SD`` in a child python (colo need not be installed: PYTHONPATH)."""
        env = offline_child_env()
        env["COLO_STATE_DIR"] = str(self.state_dir)
        return subprocess.run(
            [*COLO, *args, "--state-dir", str(self.state_dir)], env=env, capture_output=True, text=True, timeout=timeout
        )

    def _client(self) -> Any:
        from colo.api.auth import read_token
        from colo.api.client import ApiClient

        return ApiClient(self.api_url, token=read_token(self.state_dir), timeout_secs=2.0)

    def agents(self) -> dict[str, dict[str, Any]]:
        """The API's agent records (``GET /agents``) by name. Raises when the API does not answer."""
        with self._client() as client:
            return {a["name"]: a for a in client.agents()}

    def states(self) -> dict[str, str]:
        """Agent -> state, from colo's API (fast: no CLI start-up). Raises when the API does not answer."""
        return {name: a["state"] for name, a in self.agents().items()}

    def states_or_empty(self) -> dict[str, str]:
        try:
            return self.states()
        except Exception:
            return {}

    def pids(self) -> dict[str, int]:
        """Agent -> pid now (API)."""
        return {name: int(a["pid"]) for name, a in self.agents().items() if a.get("pid")}

    def status(self) -> dict[str, Any]:
        """``colo status --json`` (works while the orchestrator is down, unlike the API)."""
        out = self.colo("status", "--json", timeout=30)
        assert out.returncode == 0, out.stderr
        data: dict[str, Any] = json.loads(out.stdout)
        return data

    def orchestrator_pid(self) -> int | None:
        orch = self.status().get("orchestrator")
        return int(orch["pid"]) if orch and orch.get("pid") else None

    def infer_ok(self, name: str, timeout: float = 1.0) -> bool:
        """One small ``POST /infer`` to agent ``name`` answered 200."""
        return infer_port_ok(self.ports[name], timeout)

    def serving(self) -> dict[str, dict[str, Any]] | None:
        """Every agent's record when all are RUNNING and every one answers ``/infer``; else None."""
        try:
            agents = self.agents()
        except Exception:
            return None
        if set(agents) != set(self.ports) or any(a["state"] != "RUNNING" for a in agents.values()):
            return None
        return agents if all(answering(self.ports, 5.0).values()) else None

    def wait_all_running(self, timeout: float) -> float:
        """Seconds until every agent is RUNNING and answers ``/infer``. Raises AssertionError (with the states)
        after ``timeout`` seconds."""
        t0 = time.monotonic()
        if not wait_for(self.serving, timeout=timeout, step=0.25, tick=self._watch_start(t0)):
            raise AssertionError(
                f"the newsroom is not all RUNNING and answering after {timeout:.0f} s: {self.states_or_empty()}"
            )
        return time.monotonic() - t0

    def checker(self, names: Collection[str] | None = None) -> ServingChecker:
        """A :class:`ServingChecker` of this newsroom's agents ``names`` (None: all; use it as a context
        manager)."""
        return ServingChecker(self, names=names)

    # --- bringing it up, restoring it, taking it down -------------------------------------------------------

    def start_orchestrator(self) -> subprocess.Popen[bytes]:
        """``colo up CONFIG --state-dir SD`` in the foreground, in its own session; output to ``up-N.log``."""
        log_path = self.state_dir / f"up-{len(self.procs) + 1}.log"
        with open(log_path, "ab") as log:  # the child keeps its own copy
            proc = subprocess.Popen(
                [*COLO, "up", str(self.config), "--state-dir", str(self.state_dir)],
                env=offline_child_env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.procs.append(proc)
        return proc

    def _watch_start(self, t0: float) -> Any:
        def tick() -> None:
            if self.daemon_up_secs is None and any(p.kind == "control" for p in self.mps_processes()):
                self.daemon_up_secs = time.monotonic() - t0
            last = self.procs[-1] if self.procs else None
            if last is not None and last.poll() is not None:
                raise AssertionError(f"colo up exited with {last.returncode}:\n{self.up_log_tail()}")

        return tick

    def bring_up(self, timeout: float = UP_TIMEOUT_SECS) -> None:
        """Start the orchestrator and wait until every agent is RUNNING and answering (``up_secs``)."""
        self.start_orchestrator()
        self.up_secs = self.wait_all_running(timeout)

    def restore(self, timeout: float = 60) -> None:
        """After a drill that broke things: every agent RUNNING and answering again. Waits; if not, starts the
        orchestrator again when it is gone and restarts (``colo agent restart``) each agent that is not RUNNING
        or does not answer; then waits again. Raises AssertionError when it cannot."""
        with contextlib.suppress(AssertionError):
            self.wait_all_running(timeout / 2)
            return
        if self.orchestrator_pid() is None:
            self.start_orchestrator()
        states = self.states_or_empty()
        for name in self.ports:
            if states.get(name) != "RUNNING" or not self.infer_ok(name, 5.0):
                self.colo("agent", "restart", name, timeout=60)
        self.wait_all_running(timeout / 2)

    def down(self, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """``colo down``; waits for the orchestrators this object started to exit."""
        out = self.colo("down", "--timeout", f"{timeout:g}", timeout=timeout + 30)
        for p in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(30)
        self.is_down = True
        return out

    def close(self) -> None:
        """Always, at the end of the session: down, kill what is left, quit the MPS daemons, keep logs on a
        failure."""
        if not self.is_down:
            with contextlib.suppress(Exception):
                self.down()
        for p in self.procs:
            with contextlib.suppress(Exception):
                os.killpg(p.pid, signal.SIGKILL)
            with contextlib.suppress(Exception):
                p.wait(5)
        if self.failed_tests:
            print(f"--- the newsroom's colo up output ({len(self.failed_tests)} test(s) failed)\n{self.up_log_tail()}")
        self.keep_logs()  # always: the start-up timeline (launcher, agents' start phases) is read from them
        clean_state_dir(self.state_dir)

    def up_log_tail(self, chars: int = 3000) -> str:
        return "".join(
            f"--- {log.name}\n{log.read_text(errors='replace')[-chars:]}\n" for log in sorted(self.state_dir.glob("up-*.log"))
        )

    def start_timeline(self) -> str:
        """Where ``colo up``'s seconds went: the launcher's ready line and the slowest agent's first start
        phases (from forkserver.log and the agents' logs)."""
        parts = []
        fs = self.state_dir / "logs" / "forkserver.log"
        ready = [ln for ln in fs.read_text(errors="replace").splitlines() if "launcher ready" in ln] if fs.exists() else []
        parts.append(ready[0].strip() if ready else "no launcher ready line")
        slowest: tuple[float, str, str] | None = None
        for log in sorted((self.state_dir / "logs").glob("*.log")):
            for ln in log.read_text(errors="replace").splitlines():
                m = re.search(r"start phases: (.*) total ([0-9.]+)s", ln)
                if m:
                    total = float(m.group(2))
                    if slowest is None or total > slowest[0]:
                        slowest = (total, log.stem, m.group(1))
                    break  # the first start only
        if slowest is not None:
            parts.append(f"slowest agent {slowest[1]} {slowest[0]:.2f}s: {slowest[2]}")
        return "; ".join(parts)

    def keep_logs(self) -> None:
        """Copy colo up's output, the agents', orchestrator's and MPS logs to ``$COLO_GPU_OUT/<label>``."""
        out = os.environ.get("COLO_GPU_OUT")
        if not out:
            return
        dest = Path(out) / self.label
        dest.mkdir(parents=True, exist_ok=True)
        logs = [*self.state_dir.glob("up-*.log"), *self.state_dir.glob("logs/*.log"), *self.state_dir.glob("mps/*/log/*.log")]
        for f in logs:
            with contextlib.suppress(OSError):
                shutil.copy(f, dest / (f.name if f.parent.name != "log" else f"mps-{f.name}"))

    # --- MPS, events, leftovers -------------------------------------------------------------------------

    def mps_processes(self, uuid: str | None = None) -> list[MpsProc]:
        """This state dir's MPS daemon/server processes (kind, pid); only GPU ``uuid``'s when given."""
        return mps_processes(self.state_dir if uuid is None else self.pipe_dir(uuid))

    def gpu_uuids(self) -> list[str]:
        """UUIDs of the GPUs with an MPS root (pipe and log dirs) under this state dir."""
        from colo.gpu.mps.root import MpsRoot

        return MpsRoot.under_state_dir(self.state_dir).gpu_uuids()

    def pipe_dir(self, uuid: str) -> Path:
        """GPU ``uuid``'s MPS pipe dir under this state dir."""
        from colo.gpu.mps.root import MpsRoot

        return MpsRoot.under_state_dir(self.state_dir).for_gpu(uuid).pipe_dir

    def gpu(self) -> tuple[str, Path]:
        """(UUID, pipe dir) of the newsroom's one GPU."""
        (uuid,) = self.gpu_uuids()
        return uuid, self.pipe_dir(uuid)

    def mps_pid(self, kind: str, uuid: str | None = None) -> int | None:
        """A GPU's control daemon (process scan) or server (``get_server_list``, then the scan): GPU ``uuid``'s,
        or the newsroom's one GPU's."""
        from colo.gpu.mps.daemon import MpsDaemon
        from colo.gpu.mps.root import MpsRoot

        if kind == "server":
            gpu = uuid or self.gpu()[0]
            with contextlib.suppress(Exception):
                pids = MpsDaemon(MpsRoot.under_state_dir(self.state_dir).for_gpu(gpu), gpu).server_pids()
                if pids:
                    return pids[0]
        found = [p.pid for p in self.mps_processes(uuid) if p.kind == kind]
        return found[0] if found else None

    def events_after(self, seq: int, kind: str | None = None, text: str = "") -> list[Any]:
        """The store's events after ``seq`` (of ``kind``, whose message contains ``text``), oldest first."""
        from colo.supervise.store import Store

        store = Store(self.state_dir / "colo.db")
        try:
            events = store.events(0, 1_000_000)
        finally:
            store.close()
        return sorted(
            (e for e in events if e.seq > seq and (kind is None or e.kind.value == kind) and text in e.message),
            key=lambda e: e.seq,
        )

    def last_seq(self) -> int:
        return max((e.seq for e in self.events_after(0)), default=0)

    def unreaped_zombies(self) -> list[Zombie]:
        """MPS zombies whose parent is a process of this state dir (an orchestrator that did not reap them)."""
        ours = set(processes_mentioning(str(self.state_dir)))
        return [z for z in zombies() if "nvidia-cuda-mps" in z.name and z.ppid in ours]

    def left_after_down(self, timeout: float = 10.0) -> tuple[list[str], list[int], list[str]]:
        """After ``colo down``: this state dir's MPS processes (``KIND:PID``), the processes that name it, and
        the MPS zombies it left unreaped, once all are gone or after ``timeout`` s (printed as ``GPU-LEFTOVERS
        drill=end``, with every zombie here)."""
        sd = str(self.state_dir)
        wait_for(lambda: not self.mps_processes() and not processes_mentioning(sd), timeout=timeout, step=0.2)
        mps = [f"{p.kind}:{p.pid}" for p in self.mps_processes()]
        agents = processes_mentioning(sd)
        unreaped = [str(x) for x in self.unreaped_zombies()]
        z = [str(x) for x in zombies()]
        print(f"GPU-LEFTOVERS drill=end zombies={z or 'none'} mps={mps or 'none'} agents={agents or 'none'}")
        return mps, agents, unreaped

    def down_leaves_nothing(self, timeout: float = 60) -> tuple[bool, float, str]:
        """``colo down``, then :meth:`left_after_down`: (nothing left and exit 0, seconds ``colo down`` took, the
        detail — with its stderr's tail when something was left)."""
        t0 = time.monotonic()
        out = self.down(timeout=timeout)
        secs = time.monotonic() - t0
        mps, agents, unreaped = self.left_after_down()
        z = [str(x) for x in zombies()]
        ok = out.returncode == 0 and not mps and not agents and not unreaped
        detail = (
            f"colo down rc={out.returncode}; MPS processes: {mps or 'none'}; processes of the state dir: "
            f"{agents or 'none'}; zombies: {z or 'none'} (colo's to reap: {unreaped or 'none'})"
        )
        return ok, secs, detail if ok else detail + out.stderr[-500:]

    def leftovers(self, tag: int | str) -> list[str]:
        """Zombies (every one here) and this state dir's MPS processes now, printed as one ``GPU-LEFTOVERS``
        line and returned (``zombie PID:NAME(parent P)``, ``mps KIND:PID``)."""
        z = [str(x) for x in zombies()]
        m = [f"{p.kind}:{p.pid}" for p in self.mps_processes()]
        print(f"GPU-LEFTOVERS drill={tag} zombies={z or 'none'} mps={m or 'none'}")
        return [f"zombie {x}" for x in z] + [f"mps {x}" for x in m]


class ServingChecker:
    """While a drill runs: every ~0.2 s, colo's agent states (its API) and one small ``/infer`` per agent (of
    ``names``, when given: e.g. one GPU's agents).

    ``samples``: agent-samples taken (agents × rounds); ``failed_requests``: failed ``/infer`` per agent;
    ``running_while_failing``: samples where colo said RUNNING (read before the round and again once its
    answers are in) and ``/infer`` failed (the promise: 0),
    ``running_while_failing_by_agent`` the same per agent; ``first_failure_at``: monotonic time of the first
    round with a failed ``/infer``; ``all_answering_again_at``: the first round after the last failing one in
    which every agent answered (None while the last round failed)."""

    def __init__(
        self, room: Newsroom, interval_secs: float = CHECK_INTERVAL_SECS, *, names: Collection[str] | None = None
    ) -> None:
        self.room = room
        self.ports = dict(room.ports) if names is None else {n: room.ports[n] for n in names}
        self.interval_secs = interval_secs
        self.samples = 0
        self.rounds = 0
        self.failed_requests: dict[str, int] = {}
        self.running_while_failing_by_agent: dict[str, int] = {}
        self.first_failure_at: float | None = None
        self.all_answering_again_at: float | None = None
        self._stop = threading.Event()
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._loop, name="serving-checker", daemon=True)

    def __enter__(self) -> ServingChecker:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    @property
    def running_while_failing(self) -> int:
        return sum(self.running_while_failing_by_agent.values())

    def wait_rounds(self, n: int, timeout: float = 10.0) -> bool:
        """Wait until ``n`` more rounds are done (a moment of steady serving in the counts), at most
        ``timeout`` seconds."""
        with self._cond:
            target = self.rounds + n
            return self._cond.wait_for(lambda: self.rounds >= target, timeout=timeout)

    def summary(self) -> str:
        by = ",".join(f"{n}:{c}" for n, c in sorted(self.running_while_failing_by_agent.items())) or "none"
        failed = sum(self.failed_requests.values())
        return (
            f"running_while_failing={self.running_while_failing} (of {self.samples} samples; by agent: {by}); "
            f"failed_requests={failed}"
        )

    def record(self, t: float, states: Mapping[str, str], oks: Mapping[str, bool]) -> None:
        """One round's reading (``t`` monotonic seconds)."""
        with self._cond:
            failing = False
            for name, ok in oks.items():
                self.samples += 1
                if not ok:
                    failing = True
                    self.failed_requests[name] = self.failed_requests.get(name, 0) + 1
                    if states.get(name) == "RUNNING":
                        self.running_while_failing_by_agent[name] = self.running_while_failing_by_agent.get(name, 0) + 1
            if failing:
                if self.first_failure_at is None:
                    self.first_failure_at = t
                self.all_answering_again_at = None
            elif self.first_failure_at is not None and self.all_answering_again_at is None:
                self.all_answering_again_at = t
            self.rounds += 1
            self._cond.notify_all()

    def _loop(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            before = self.room.states_or_empty()
            oks = answering(self.ports, 1.0)
            # colo's claim when the answers are in: a request that hung for its 1 s timeout while colo saw the
            # fault and said so counts as failed, not as RUNNING-while-failing (RUNNING both before and after).
            after = self.room.states_or_empty()
            states = {n: s for n, s in before.items() if after.get(n) == s}
            self.record(started, states, oks)
            self._stop.wait(max(0.0, self.interval_secs - (time.monotonic() - started)))


@contextlib.contextmanager
def running_newsroom(room: Newsroom | None = None) -> Iterator[Newsroom]:
    """A newsroom (``room``, else the sized one) up and serving; always closed (the session fixture's body)."""
    room = room if room is not None else Newsroom()
    try:
        try:
            room.bring_up()
        except BaseException:
            room.failed_tests.append("bring-up")
            raise
        yield room
    finally:
        room.close()
