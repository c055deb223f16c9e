"""Is a GPU's MPS hung? A bounded probe per GPU that never stalls the supervision loop.

A hung MPS server or control daemon is not a dead one: its process lives, so the liveness checks of
:mod:`colo.supervise.recovery.mps_hooks` see nothing, its clients may go on serving for a while (work
submission does not pass through the server), and the daemon stops answering. Two looks, every tick:

- **process state**: the daemon or a watched server is *stopped* (``ps`` stat ``T``: SIGSTOP, a tracer) —
  hung at once (``colo.gpu.procs`` through :meth:`MpsControl.stopped`, a read of ``/proc``);
- **a control query**: ``get_server_list`` with a :data:`PROBE_TIMEOUT_SECS` timeout, sent every
  :data:`PROBE_EVERY_SECS` *off the loop* (``submit``: a worker thread in production, a synchronous call in
  tests); the loop only looks at whether the last one answered. No answer for :data:`HUNG_AFTER_SECS`, over
  at least :data:`UNANSWERED_PROBES` probes in a row — hung.

Worst case from the moment a daemon stops answering: the next probe is sent ≤ 0.25 s later, fails 0.5 s after,
the next fails 0.75 s after that: hung seen within ~1.5 s (plus a tick), inside issue 21's 2 s.

:meth:`MpsProbe.answering` is also the gate for launches: a relaunch never starts while its GPU's daemon does
not answer (an agent started then would silently run as a plain CUDA context, outside its limits).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from colo.clock import Clock
from colo.errors import MpsError
from colo.gpu.mps.daemon import MpsDaemon

#: How often (seconds) each GPU's daemon is asked ``get_server_list``.
PROBE_EVERY_SECS = 0.25
#: How long one probe waits for the daemon's answer (seconds).
PROBE_TIMEOUT_SECS = 0.5
#: A daemon that has not answered for this long (seconds) ...
HUNG_AFTER_SECS = 1.0
#: ... over at least this many probes in a row is hung.
UNANSWERED_PROBES = 2
#: A probe still in flight this long after it was sent (its thread stuck) counts as unanswered.
_STUCK_SECS = PROBE_TIMEOUT_SECS + 0.5

Submit = Callable[[Callable[[], str]], "Future[str]"]


def run_now(fn: Callable[[], str]) -> Future[str]:
    """A ``submit`` that runs the query at once, in the caller's thread (tests with fake MPS, which answer or
    fail at once)."""
    fut: Future[str] = Future()
    try:
        fut.set_result(fn())
    except MpsError as exc:
        fut.set_exception(exc)
    return fut


@dataclass(frozen=True)
class HungVerdict:
    """A GPU whose MPS is hung: which part (``server`` or ``daemon``), why, and when it last answered
    (monotonic seconds)."""

    gpu_uuid: str
    part: str
    detail: str
    answered_at: float


@dataclass
class _Gpu:
    answered_at: float
    unanswered: int = 0
    next_at: float = 0.0
    sent_at: float = 0.0
    pending: Future[str] | None = field(default=None, repr=False)


class MpsProbe:
    """The probe of every watched GPU. ``submit`` runs one query off the loop (default: a small thread pool,
    created on first use); ``clock`` is the supervisor's. Call :meth:`look` from the loop only."""

    def __init__(self, clock: Clock, submit: Submit | None = None) -> None:
        self._clock = clock
        self._submit = submit
        self._pool: ThreadPoolExecutor | None = None
        self._gpus: dict[str, _Gpu] = {}

    def _send(self, fn: Callable[[], str]) -> Future[str]:
        if self._submit is not None:
            return self._submit(fn)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="colo-mps-probe")
        return self._pool.submit(fn)

    def reset(self, gpu_uuid: str) -> None:
        """The GPU's daemon was just started, adopted or restarted (and answered): a fresh start."""
        self._gpus[gpu_uuid] = _Gpu(answered_at=self._clock.monotonic())

    def forget(self, gpu_uuid: str) -> None:
        """Stop probing this GPU (it left the fleet)."""
        self._gpus.pop(gpu_uuid, None)

    def answering(self, gpu_uuid: str) -> bool:
        """False while this GPU's daemon is taken for not answering (a probe of a watched GPU failed
        :data:`UNANSWERED_PROBES` times in a row); True for a GPU not probed."""
        g = self._gpus.get(gpu_uuid)
        return g is None or g.unanswered < UNANSWERED_PROBES

    def look(
        self,
        gpu_uuid: str,
        daemon: MpsDaemon,
        daemon_pid: int | None,
        server_pids: list[int],
        stopped: Callable[[int], bool],
    ) -> HungVerdict | None:
        """One look at one GPU (every tick): a stopped daemon or server, or a daemon that stopped answering.
        Sends the next query when due (also when the daemon's pid is not known: the answer is the truth);
        never waits for it. Never raises."""
        now = self._clock.monotonic()
        g = self._gpus.setdefault(gpu_uuid, _Gpu(answered_at=now))
        halted = [pid for pid in server_pids if stopped(pid)]
        if halted:
            pids = ", ".join(map(str, halted))
            return HungVerdict(gpu_uuid, "server", f"MPS server {pids} is stopped (state T): hung", g.answered_at)
        if daemon_pid is not None and stopped(daemon_pid):
            return HungVerdict(
                gpu_uuid, "daemon", f"MPS control daemon {daemon_pid} is stopped (state T): hung", g.answered_at
            )
        self._collect(g, now)
        if g.pending is None and now >= g.next_at:
            g.sent_at, g.next_at = now, now + PROBE_EVERY_SECS
            g.pending = self._send(lambda: daemon.send("get_server_list", timeout_secs=PROBE_TIMEOUT_SECS))
            self._collect(g, now)  # a synchronous submit has the answer already
        if g.unanswered >= UNANSWERED_PROBES and now - g.answered_at >= HUNG_AFTER_SECS:
            return HungVerdict(
                gpu_uuid,
                "daemon",
                f"MPS control daemon {daemon_pid or '(pid unknown)'} did not answer get_server_list for {now - g.answered_at:.2f} s"
                f" ({g.unanswered} probes of {PROBE_TIMEOUT_SECS:g} s in a row)",
                g.answered_at,
            )
        return None

    def _collect(self, g: _Gpu, now: float) -> None:
        fut = g.pending
        if fut is None:
            return
        if not fut.done():
            if now - g.sent_at >= _STUCK_SECS:
                g.unanswered += 1  # its thread is stuck past the timeout: unanswered, and asked again
                g.pending = None
            return
        g.pending = None
        if fut.exception() is None:
            g.answered_at, g.unanswered = now, 0
        else:
            g.unanswered += 1

    def close(self) -> None:
        """End the worker threads (a query in flight ends by its own timeout)."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
