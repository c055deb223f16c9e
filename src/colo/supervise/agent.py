"""One agent's life: a state machine driven by ``tick()`` with an injected clock, runner and health probe.

Nothing here sleeps or raises into the loop: a crash, a spawn failure, a failing health check becomes a
state, a ``last_error`` and an event. Transitions follow :data:`colo.supervise.state.ALLOWED`; each one is
commented where it happens. ``docs/states.md`` draws them.

* RUNNING only after the health check passes (``type: none``: after ``start_secs`` up).
* An exit is a *failure* unless it has code 0 (or the agent was asked to stop). Failures in a row — exits
  while STARTING or within ``stable_secs`` of becoming RUNNING — beyond ``max_retries`` make it FATAL.
* ``hold`` (set during MPS fault recovery) keeps an agent that exited in BACKOFF until released, without
  counting the exit as a failure: the fault was the GPU's, not the agent's.
* An agent that was RUNNING and exits with ``EXIT_CONTEXT_LOST`` (its CUDA context broke under it: an MPS
  server that died, a sticky device error) starts again at once, and the exit is not counted as a failure;
  the supervisor also tells MPS recovery (``colo.supervise.recovery.mps_recovery``), which decides whether the whole GPU
  must recover. While STARTING, that exit code counts like any failure (so a broken GPU ends in FATAL).
* ``launch_gate`` (the supervisor's: is this agent's GPU's MPS daemon answering?) is asked before every
  start; while it names a reason to wait the agent stays in BACKOFF and asks again every
  :data:`GATE_RETRY_SECS` — an MPS client started while no daemon answers would silently run as a plain CUDA
  context, outside its limits.
* ``ready_gate`` (the supervisor's: was this agent found outside its MPS plan, and has no GPU reading confirmed it
  since?) is asked before STARTING -> RUNNING: while it names a reason a healthy agent stays STARTING (killed
  as not ready past ``startup_timeout_secs``) — an agent colo found outside MPS is not called RUNNING again
  until a reading lists it as its plan says.
* :meth:`Agent.give_up` (MPS recovery's bounds, ``colo.supervise.recovery``): FATAL with a reason — at once
  when it has no process, else once its process is stopped.
* Killing an unhealthy process sends the stop signal and SIGCONT: a stopped (SIGSTOP) process would otherwise
  only see the signal at SIGKILL time, ``stop_wait_secs`` later.
"""

from __future__ import annotations

import math
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from colo.clock import Clock
from colo.errors import SupervisorError
from colo.launch.health import Probe
from colo.launch.runner import ExitStatus, LaunchSpec, ProcessHandle, Runner
from colo.modelserver.exit_codes import EXIT_CONTEXT_LOST
from colo.spec.config import HealthCheck
from colo.supervise.logs import last_line
from colo.supervise.policy import RestartRules
from colo.supervise.snapshots import AgentStatus, EventKind, Shape
from colo.supervise.state import AgentState, check_transition
from colo.supervise.store import AgentRecord

#: While STARTING, probe at least this often (seconds) so readiness is noticed quickly: a refused connection or
#: a 503 costs about a millisecond, and a forked agent is ready about a second after its fork.
STARTING_PROBE_SECS = 0.1
#: A start the launch gate held back is tried again after this many seconds.
GATE_RETRY_SECS = 0.25

#: Records one agent's event: (kind, message); the supervisor adds the agent and its GPU.
AgentEventSink = Callable[[EventKind, str], None]


@dataclass(frozen=True)
class AgentSetup:
    """Everything one agent runs with: how to launch it, how to check it, when to restart it, its plan."""

    name: str
    launch: LaunchSpec
    health: HealthCheck
    rules: RestartRules
    priority: str = "medium"
    requirement_bytes: int = 0
    models: tuple[str, ...] = ()

    @property
    def limit_bytes(self) -> int:
        return self.launch.limit_bytes

    def needs_restart_for(self, new: AgentSetup) -> bool:
        """Whether ``new`` needs a new process (limit, placement, command, env or cwd changed)."""
        return self.launch != new.launch


class Agent:
    """One supervised agent. Call :meth:`tick` often; use start/stop/restart to steer it."""

    def __init__(
        self,
        setup: AgentSetup,
        *,
        runner: Runner,
        probe: Probe,
        clock: Clock,
        log_path: Path,
        on_event: AgentEventSink,
        on_change: Callable[[Agent], None],
        restarts: int = 0,
        pre_stop: Callable[[Agent], None] | None = None,
        launch_gate: Callable[[Agent], str | None] | None = None,
        ready_gate: Callable[[Agent], str | None] | None = None,
    ) -> None:
        self.setup = setup
        self._pre_stop = pre_stop
        self._launch_gate = launch_gate
        self._ready_gate = ready_gate
        self._next_setup: AgentSetup | None = None
        self._runner = runner
        self._probe = probe
        self._clock = clock
        self._log_path = log_path
        self._emit = on_event
        self._changed = on_change
        self.state = AgentState.STOPPED
        self.handle: ProcessHandle | None = None
        self.restarts = restarts
        self.failures = 0  # failures in a row (crash-loop counter)
        self.hold = False
        self.last_error: str | None = None
        self.last_error_line: str | None = None  # its log's last line when it last failed
        self.since = clock.wall()
        self.memory_used_bytes: int | None = None
        self.memory_peak_bytes: int | None = None
        self.shapes: tuple[Shape, ...] = ()  # the largest batch per model, from its health body (built-in agent)
        self.requests_answered: int | None = None  # requests answered since it started, from its health body
        self.mps_client: bool | None = None  # its process is an MPS client (GPU reading); None: not seen yet
        self._spawned_once = False
        self._started_at = 0.0
        self._ready_at: float | None = None
        self._next_probe_at = 0.0
        self._health_failures = 0
        self._backoff_until = 0.0
        self._stop_deadline = 0.0
        self._stop_wait = self.setup.rules.stop_wait_secs
        self._killed = False
        self._kill_reason: str | None = None
        self._restart_after_stop: str | None = None
        self._fatal_after_stop: str | None = None  # give_up() while a process was still up
        self._oom: str | None = None
        self.last_exit: ExitStatus | None = None  # how the last process ended (None before the first exit)

    @property
    def name(self) -> str:
        return self.setup.name

    # steering --------------------------------------------------------------------------------------------
    def start(self, reason: str = "start requested") -> None:
        """Start if not up: STOPPED/EXITED/FATAL/BACKOFF -> STARTING (a stop in progress restarts after)."""
        if self.state in (AgentState.STARTING, AgentState.RUNNING):
            return
        self._fatal_after_stop = None  # a person (or colo) asked for it: that overrides a give-up still pending
        if self.state == AgentState.STOPPING:
            self._restart_after_stop = reason
            return
        if self.state in (AgentState.EXITED, AgentState.FATAL, AgentState.STOPPED):
            self.failures = 0  # a person (or colo up) asked: a fresh start, not part of a crash loop
        self._spawn(reason)

    def stop(self, reason: str = "stop requested", *, restart: bool = False, wait_secs: float | None = None) -> None:
        """Stop: the stop signal now, SIGKILL after ``stop_wait_secs`` (or ``wait_secs``, when shorter: MPS
        recovery, whose agents have no usable GPU context left to shut down). ``restart`` starts it again after."""
        now = self._clock.monotonic()
        self._restart_after_stop = reason if restart else None
        if self.state in (AgentState.STARTING, AgentState.RUNNING):
            # STARTING/RUNNING -> STOPPING: stop, restart, apply, or MPS fault recovery
            self._set(AgentState.STOPPING)
            self._stop_wait = self.setup.rules.stop_wait_secs if wait_secs is None else min(
                wait_secs, self.setup.rules.stop_wait_secs
            )
            self._stop_deadline = now + self._stop_wait
            self._killed = False
            if self.handle is not None:
                if self._pre_stop is not None:
                    self._pre_stop(self)  # MPS terminate_client: the supported way to end a client
                self._runner.signal(self.handle, self.setup.rules.stop_signal)
            return
        if self.state == AgentState.STOPPING:
            return
        if self.state in (AgentState.BACKOFF, AgentState.EXITED, AgentState.FATAL):
            # BACKOFF/EXITED/FATAL -> STOPPED: nothing runs; clear the state
            self._set(AgentState.STOPPED)
            self._emit(EventKind.STOPPED, reason)
        if restart:
            self._restart_after_stop = None
            self._spawn(reason)

    def give_up(self, reason: str) -> None:
        """Stop trying to keep it up (MPS recovery's bounds): FATAL with ``reason`` as ``last_error`` — at once
        when it has no process (STOPPED/BACKOFF -> FATAL), else once its process is gone (stopped first; one
        already stopping is not started again). A hold ends: a person's next start is an ordinary one. An agent
        EXITED or FATAL already keeps its state and its own reason."""
        self.hold = False
        if self.state in (AgentState.EXITED, AgentState.FATAL):
            return
        self.last_error = reason
        if self.state in (AgentState.STARTING, AgentState.RUNNING, AgentState.STOPPING):
            self.stop(reason)  # STARTING/RUNNING -> STOPPING (nothing new when already stopping)
            self._restart_after_stop = None
            self._fatal_after_stop = reason
            self._changed(self)
        elif self.state in (AgentState.STOPPED, AgentState.BACKOFF):
            # STOPPED/BACKOFF -> FATAL: MPS recovery gave up on it (it had been stopped by that recovery)
            self._set(AgentState.FATAL)

    @property
    def giving_up(self) -> bool:
        """FATAL once its process is gone (:meth:`give_up` while it was up)."""
        return self._fatal_after_stop is not None

    def restart(self, reason: str = "restart requested") -> None:
        """Stop (if up) and start again."""
        self.stop(reason, restart=True)

    def reconfigure(self, setup: AgentSetup) -> None:
        """Use ``setup`` from the next start on (the running process is left alone)."""
        if setup.launch == self.setup.launch:
            self.setup = setup
            self._next_setup = None
        else:
            self._next_setup = setup

    def adopt(self, handle: ProcessHandle) -> None:
        """Take over a live process found after an orchestrator restart: STOPPED -> RUNNING."""
        self.handle = handle
        self._spawned_once = True
        now = self._clock.monotonic()
        self._started_at = now
        self._ready_at = now
        self._next_probe_at = now  # probed on the next tick: RUNNING must be confirmed by its health check
        # STOPPED -> RUNNING: re-adopted a live process after an orchestrator restart
        self._set(AgentState.RUNNING)
        self._emit(EventKind.ADOPTED, f"re-adopted pid {handle.pid}")

    def note_oom(self, line: str) -> None:
        """The agent's log says it ran out of GPU memory (its MPS limit): record it once per process."""
        if self._oom is None and self.handle is not None:
            self._oom = line
            self.last_error = f"out of memory: {line}"
            self._emit(EventKind.OOM, f"out of memory (limit {self.setup.limit_bytes} bytes): {line}")
            self._changed(self)

    # the loop --------------------------------------------------------------------------------------------
    def tick(self) -> None:
        """Advance the state machine by looking at the process and the clock."""
        now = self._clock.monotonic()
        st = self.state
        if st == AgentState.BACKOFF:
            if not self.hold and now >= self._backoff_until:
                self._spawn("backoff over")  # BACKOFF -> STARTING
            return
        if st not in (AgentState.STARTING, AgentState.RUNNING, AgentState.STOPPING) or self.handle is None:
            return
        status = self._runner.poll(self.handle)
        if st == AgentState.STOPPING:
            if status is not None:
                self._on_stopped(status)
            elif now >= self._stop_deadline and not self._killed:
                self._kill(f"did not stop within {self._stop_wait:g} s")
            return
        if status is not None:
            self._on_exit(status, now)
            return
        if self._kill_reason is not None:
            if now >= self._stop_deadline and not self._killed:
                self._kill(self._kill_reason)
            return
        if st == AgentState.STARTING:
            self._tick_starting(now)
        else:
            self._tick_running(now)

    def _tick_starting(self, now: float) -> None:
        check = self.setup.health
        up_secs = now - self._started_at
        if check.type == "none":
            if up_secs >= check.start_secs and not self._gated(up_secs):
                self._ready(f"up for {check.start_secs:g} s")
            return
        if now >= self._next_probe_at:
            self._next_probe_at = now + min(check.interval_secs, STARTING_PROBE_SECS)
            result = self._probe(check)
            if result.ok:
                if not self._gated(up_secs):
                    self._ready(result.detail or "health check passed")
                return
            self.last_error = f"not ready: {result.detail}"
        if up_secs >= check.startup_timeout_secs:
            self._begin_kill(f"not healthy after {check.startup_timeout_secs:g} s ({self.last_error})")

    def _gated(self, up_secs: float) -> bool:
        """Whether the ready gate holds this healthy agent in STARTING now (its reason kept as ``last_error``);
        past ``startup_timeout_secs`` it is killed as not ready, like an agent that never passed its check."""
        wait = self._ready_gate(self) if self._ready_gate is not None else None
        if wait is None:
            return False
        if self.last_error != wait:
            self.last_error = wait
            self._changed(self)
        timeout = self.setup.health.startup_timeout_secs
        if up_secs >= timeout:
            self._begin_kill(f"not ready after {timeout:g} s ({wait})")
        return True

    def _tick_running(self, now: float) -> None:
        stable_secs = self.setup.rules.stable_secs
        if self.failures and self._ready_at is not None and now - self._ready_at >= stable_secs:
            self.failures = 0  # stayed up: the crash loop (if any) is over
        check = self.setup.health
        if check.type == "none" or now < self._next_probe_at:
            return
        self._next_probe_at = now + check.interval_secs
        result = self._probe(check)
        if result.ok:
            self._health_failures = 0
            self._read_body(result.body)
            return
        self._health_failures += 1
        self.last_error = f"health check failed: {result.detail}"
        if self._health_failures >= check.failures_before_restart:
            self._emit(EventKind.UNHEALTHY, f"{self._health_failures} failed health checks: {result.detail}")
            self._begin_kill(f"unhealthy ({result.detail})")
        else:
            self._changed(self)

    def _read_body(self, body: dict[str, object] | None) -> None:
        """What a built-in agent's /health says besides "ready": its largest batches (usage history) and its
        out-of-memory count (507 answers: a second sign, after its log line, that it ran out of memory)."""
        if not body:
            return
        self.shapes = shapes_of(body)
        answered = body.get("requests")
        self.requests_answered = answered if isinstance(answered, int) else None
        oom = body.get("out_of_memory")
        if isinstance(oom, int) and oom > 0:
            self.note_oom(f"its /health counts {oom} out-of-memory error(s) (HTTP 507)")

    # internals -------------------------------------------------------------------------------------------
    def _set(self, new: AgentState) -> None:
        check_transition(self.state, new)
        self.state = new
        self.since = self._clock.wall()
        self._changed(self)

    def _spawn(self, reason: str) -> None:
        if self._next_setup is not None:
            self.setup, self._next_setup = self._next_setup, None
        now = self._clock.monotonic()
        wait = self._launch_gate(self) if self._launch_gate is not None else None
        if wait is not None:
            self.last_error = wait
            self._backoff_until = now + GATE_RETRY_SECS
            if self.state != AgentState.BACKOFF:
                # STOPPED/EXITED/FATAL -> BACKOFF: start requested, but its GPU's MPS daemon does not answer
                self._set(AgentState.BACKOFF)
            else:
                self._changed(self)
            return
        # STOPPED/EXITED/FATAL/BACKOFF -> STARTING: start requested, or backoff over
        self._set(AgentState.STARTING)
        self._started_at = now
        self._ready_at = None
        self._next_probe_at = now
        self._health_failures = 0
        self._kill_reason = None
        self._killed = False
        self._oom = None
        self.memory_used_bytes = None
        self.shapes = ()
        self.requests_answered = None
        self.mps_client = None
        try:
            self.handle = self._runner.spawn(self.setup.launch, self._log_path)
        except SupervisorError as exc:
            self.handle = None
            self.last_error = str(exc)
            self._emit(EventKind.FATAL, f"could not start: {exc}")
            self._set(AgentState.FATAL)  # STARTING -> FATAL: spawn failed
            return
        how = f", {self.handle.launch}" if self.handle.launch else ""  # forked, or spawned and why
        if self._spawned_once:
            self.restarts += 1
            self._emit(EventKind.RESTARTED, f"restarted ({reason}), pid {self.handle.pid}{how}")
        else:
            self._emit(EventKind.STARTED, f"started, pid {self.handle.pid}{how}")
        self._spawned_once = True
        self._changed(self)

    def _ready(self, detail: str) -> None:
        now = self._clock.monotonic()
        self._ready_at = now
        self._next_probe_at = now + self.setup.health.interval_secs
        if not (self.last_error or "").startswith("out of memory"):
            self.last_error = None
        self.last_error_line = None
        self._set(AgentState.RUNNING)  # STARTING -> RUNNING: health check passed
        self._emit(EventKind.READY, f"ready ({detail})")

    def _begin_kill(self, reason: str) -> None:
        # Stay in STARTING/RUNNING while the process is being killed; its exit then counts as a failure.
        self._kill_reason = reason
        self.last_error = reason
        self._stop_deadline = self._clock.monotonic() + self.setup.rules.stop_wait_secs
        self._killed = False
        if self.handle is not None:
            self._runner.signal(self.handle, self.setup.rules.stop_signal)
            self._runner.signal(self.handle, int(signal.SIGCONT))  # a hung (stopped) process must see it now
        self._changed(self)

    def _kill(self, reason: str) -> None:
        self._killed = True
        if self.handle is not None:
            self._emit(EventKind.STOPPED, f"SIGKILL pid {self.handle.pid}: {reason}")
            self._runner.signal(self.handle, int(signal.SIGKILL))

    def _on_stopped(self, status: ExitStatus) -> None:
        pid = self.handle.pid if self.handle else None
        self.last_exit = status
        self.handle = None
        self.memory_used_bytes = None
        self.mps_client = None
        self._set(AgentState.STOPPED)  # STOPPING -> STOPPED: the process is gone
        self._emit(EventKind.STOPPED, f"stopped, pid {pid} ({status.describe()})")
        if self._fatal_after_stop is not None:
            self.last_error, self._fatal_after_stop = self._fatal_after_stop, None
            self._restart_after_stop = None
            self._set(AgentState.FATAL)  # STOPPED -> FATAL: given up while its process was up (now gone)
            return
        reason = self._restart_after_stop
        self._restart_after_stop = None
        if reason is not None and not self.hold:
            self._spawn(reason)

    def _on_exit(self, status: ExitStatus, now: float) -> None:
        pid = self.handle.pid if self.handle else None
        self.handle = None
        self.memory_used_bytes = None
        self.mps_client = None
        desc = status.describe()
        self.last_exit = status
        context_lost = status.code == EXIT_CONTEXT_LOST and self._kill_reason is None
        was_running = self.state == AgentState.RUNNING
        failed = self._kill_reason is not None or not status.succeeded
        why = self._kill_reason or desc
        if self._oom is not None:
            why = f"{why} after out of memory"
        self._kill_reason = None
        self._emit(EventKind.EXITED, f"pid {pid} exited: {desc}" + (f" ({why})" if why != desc else ""))
        if failed:
            self.last_error = why
            self.last_error_line = last_line(self._log_path)
        if self.hold:
            # STARTING/RUNNING -> BACKOFF: the GPU is recovering from an MPS fault; wait for release
            self._backoff_until = math.inf
            self._set(AgentState.BACKOFF)
            return
        if not self.setup.rules.wants_restart(succeeded=not failed):
            self._set(AgentState.EXITED)  # STARTING/RUNNING -> EXITED: the policy does not restart it
            return
        if context_lost and was_running:
            # RUNNING -> BACKOFF -> STARTING: its CUDA context broke under it (not its fault): at once, uncounted
            self.last_error = f"CUDA context lost ({desc})"
            self._backoff_until = now
            self._set(AgentState.BACKOFF)
            self._spawn("its CUDA context was lost")
            return
        stable = self._ready_at is not None and now - self._ready_at >= self.setup.rules.stable_secs
        self.failures = 1 if stable else self.failures + 1
        if failed and self.setup.rules.gives_up(self.failures):
            self.last_error = (
                f"crash loop: failed {self.failures} times in a row (max_retries "
                f"{self.setup.rules.max_retries}); last: {why}"
            )
            self._set(AgentState.FATAL)  # STARTING/RUNNING -> FATAL: retries used up
            self._emit(EventKind.FATAL, self.last_error)
            return
        delay = self.setup.rules.backoff_secs(self.failures) if failed else 0.0
        self._backoff_until = now + delay
        self._set(AgentState.BACKOFF)  # STARTING/RUNNING -> BACKOFF: the policy restarts it after a delay

    def release(self) -> None:
        """End a hold (MPS fault recovery over): a held BACKOFF agent starts on the next tick."""
        self.hold = False
        if self.state == AgentState.BACKOFF and math.isinf(self._backoff_until):
            self._backoff_until = self._clock.monotonic()

    # views -----------------------------------------------------------------------------------------------
    def status(self) -> AgentStatus:
        s = self.setup
        return AgentStatus(
            name=s.name,
            state=self.state,
            pid=self.handle.pid if self.handle else None,
            gpu=s.launch.gpu,
            gpu_uuid=s.launch.gpu_uuid,
            limit_bytes=s.launch.limit_bytes,
            requirement_bytes=s.requirement_bytes,
            priority=s.priority,
            restarts=self.restarts,
            memory_used_bytes=self.memory_used_bytes,
            memory_peak_bytes=self.memory_peak_bytes,
            last_error=self.last_error,
            last_error_line=self.last_error_line,
            since=self.since,
            models=s.models,
            mps_planned=s.launch.mps_client,
            mps_client=self.mps_client,
        )

    def record(self) -> AgentRecord:
        return AgentRecord(
            self.status(), self.handle.start_time if self.handle else None, self.setup.launch.fingerprint()
        )

    def note_memory(self, used_bytes: int | None) -> None:
        """The process's GPU memory now (NVML, bytes); keeps the peak."""
        self.memory_used_bytes = used_bytes
        if used_bytes is not None:
            self.memory_peak_bytes = max(self.memory_peak_bytes or 0, used_bytes)


def shapes_of(body: dict[str, object]) -> tuple[Shape, ...]:
    """The ``largest_batch`` of a built-in agent's /health body as shapes (malformed entries are skipped)."""
    largest = body.get("largest_batch")
    if not isinstance(largest, dict):
        return ()
    out = []
    for model, d in sorted(largest.items()):
        if isinstance(d, dict) and all(isinstance(d.get(k, 0), int) for k in ("rows", "seq_len", "new_tokens")):
            out.append(Shape(str(model), int(d.get("rows", 0)), int(d.get("seq_len", 0)), int(d.get("new_tokens", 0))))
    return tuple(out)
