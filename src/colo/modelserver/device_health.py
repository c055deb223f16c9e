"""Is the agent's CUDA context still usable? A tiny device round trip on a side stream, bounded by a timeout.

A CUDA context can break while the process lives on: a sticky error (device-side assert, illegal address), the
MPS server dying under its clients (``cudaErrorMpsRpcFailure``), a lost device. Every later CUDA call fails,
so an agent that only reported "models loaded" would answer 200 on /health and fail every request.
:class:`ContextWatch` runs a probe — by default :func:`cuda_round_trip`: one tiny kernel on its own stream,
then a wait on that stream only (never on the batch in flight) — on a side thread, and answers within
``timeout_secs`` whatever the device does: a probe still running after that is a hung device.

Probes are injected (a plain ``() -> None`` that raises when the context is unusable) so tests use fakes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from colo.clock import SYSTEM_CLOCK, Clock
from colo.modelserver.device_errors import DeviceErrorKind, classify, first_line

Probe = Callable[[], None]

DEFAULT_TIMEOUT_SECS = 1.0  # below the supervisor's default health timeout (2 s)
DEFAULT_MIN_INTERVAL_SECS = 0.25
# A probe unanswered this long is a hung device, not a busy one: the context is declared lost.
DEFAULT_HANG_SECS = 10.0


def cuda_round_trip(device: str) -> Probe:
    """A probe for ``device`` (``cuda`` / ``cuda:N``): add 1 to a one-element tensor on a side stream and wait
    for that stream. Raises torch's error when the context is unusable. First call creates the stream."""
    state: dict[str, Any] = {}

    def probe() -> None:
        import torch

        if "stream" not in state:
            # The tensor comes from the current stream's pool (a side-stream allocation would reserve a
            # segment of its own); the side stream waits for its zeroing once.
            state["tensor"] = torch.zeros(1, device=device)
            stream = torch.cuda.Stream(device)  # type: ignore[no-untyped-call]
            stream.wait_stream(torch.cuda.current_stream(device))
            state["stream"] = stream
        stream = state["stream"]
        with torch.cuda.stream(stream):
            state["tensor"].add_(1)
        stream.synchronize()

    return probe


def trigger_device_assert(device: str) -> None:
    """Launch a kernel that fails a device-side assert (an index out of range) and return without waiting.

    For the GPU test's fault hook only: after it the context is broken for good (a sticky error).
    """
    import torch

    values = torch.zeros(2, device=device)
    index = torch.tensor([1 << 20], device=device)
    values.index_select(0, index)  # the launch is the point: the assert fires on the device


class ContextWatch:
    """Answers "is the context usable?" in at most ``timeout_secs``; results are reused for
    ``min_interval_secs`` so frequent /health polls cost one round trip at most that often."""

    def __init__(
        self,
        probe: Probe,
        *,
        timeout_secs: float = DEFAULT_TIMEOUT_SECS,
        min_interval_secs: float = DEFAULT_MIN_INTERVAL_SECS,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._probe = probe
        self.timeout_secs = timeout_secs
        self.min_interval_secs = min_interval_secs
        self._clock = clock
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._in_flight_since: float | None = None
        self._outcome: str | None = None  # the last finished probe's failure (None: it passed)
        self._checked_at: float | None = None

    def check(self, *, fresh_only: bool = False) -> str | None:
        """None when the context answered; else the reason it is unusable (an error line, or a timeout).
        ``fresh_only``: never reuse an earlier result."""
        return self.check_hung(fresh_only=fresh_only)[0]

    def check_hung(self, *, fresh_only: bool = False) -> tuple[str | None, float]:
        """``(reason, hung_secs)``: as :meth:`check`, and how long the unanswered probe had been running when
        the answer was decided (0.0 unless the reason is a timeout)."""
        with self._lock:
            now = self._clock.monotonic()
            fresh = (
                not fresh_only
                and self._checked_at is not None
                and now - self._checked_at < self.min_interval_secs
            )
            if fresh and self._in_flight_since is None:
                return self._outcome, 0.0
            if self._in_flight_since is None:
                self._in_flight_since = now
                self._done.clear()
                threading.Thread(target=self._run, name="colo-agent-probe", daemon=True).start()
            since = self._in_flight_since
        self._done.wait(max(0.0, self.timeout_secs - (self._clock.monotonic() - since)))
        with self._lock:
            if self._in_flight_since is None:
                return self._outcome, 0.0
            waited = self._clock.monotonic() - self._in_flight_since
            if waited >= self.timeout_secs:
                reason = f"the device did not answer a round trip within {self.timeout_secs:g} s (hung?)"
                return reason, waited
            return None, 0.0  # the clock moved less than the wait: treat as still fine

    def _run(self) -> None:
        outcome: str | None = None
        try:
            self._probe()
        except Exception as exc:
            kind = classify(exc)
            prefix = "CUDA context lost" if kind is DeviceErrorKind.CONTEXT_LOST else "device round trip failed"
            outcome = f"{prefix}: {first_line(exc)}"
        with self._lock:
            self._outcome = outcome
            self._checked_at = self._clock.monotonic()
            self._in_flight_since = None
            self._done.set()
