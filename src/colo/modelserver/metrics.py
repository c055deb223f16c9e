"""The built-in agent's Prometheus metrics (``GET /metrics``): queue depth, batch sizes, latency, errors.

One registry per :class:`AgentMetrics` (not the process-global one), so several runtimes in one process
(tests) never collide. Names, all prefixed ``colo_agent_``:

- ``queue_depth`` (gauge): requests waiting for the device worker;
- ``cuda_graphs`` (gauge): CUDA graphs held (:mod:`colo.modelserver.graphs`); ``cuda_graph_pool_bytes``
  (gauge): the bytes their pools added;
- ``batch_rows`` (histogram): rows (sequences) per batch run on the device;
- ``batch_requests`` (histogram): requests merged into one batch;
- ``request_latency_seconds`` (histogram): received to answered, for answered requests;
- ``forward_seconds`` (histogram): device time per batch;
- ``requests_total`` (counter): answered requests; ``rows_total``: their rows;
- ``errors_total{kind}`` (counter): bad_request (422), queue_full (503), not_ready (503),
  alloc_failed (507), context_lost (503), other (500);
- ``phase_seconds{phase}`` (histogram): where an answered request's time went, one observation per request
  and phase (:data:`PHASES`): ``parse`` (the HTTP body read and checked, until the route runs), ``tokenize``
  (texts to ids and the model's limits checked, on the event loop or a thread of the prepare pool, the wait for
  one included), ``queue`` (waiting for the device thread, merging included), ``to_device`` (padding and the
  host→device copy), ``forward`` (device time),
  ``to_host`` (device→host copy and formatting), ``serialize`` (the answer to JSON bytes). A histogram
  observation is a few hundred nanoseconds: always on.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

ERROR_KINDS = ("bad_request", "queue_full", "not_ready", "alloc_failed", "context_lost", "other")
PHASES = ("parse", "tokenize", "queue", "to_device", "forward", "to_host", "serialize")
_PHASE_BUCKETS: tuple[float, ...] = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0,
)
_ROW_BUCKETS: tuple[float, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
_LATENCY_BUCKETS: tuple[float, ...] = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class AgentMetrics:
    """The agent's metrics in their own registry; :meth:`render` is the ``/metrics`` body."""

    def __init__(self, agent: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        labels = ["agent"]
        self.queue_depth = Gauge(
            "colo_agent_queue_depth", "Requests waiting for the device worker.", labels, registry=self.registry
        ).labels(agent)
        self.cuda_graphs = Gauge(
            "colo_agent_cuda_graphs", "CUDA graphs held (encoder forwards replayed).", labels, registry=self.registry
        ).labels(agent)
        self.cuda_graph_pool_bytes = Gauge(
            "colo_agent_cuda_graph_pool_bytes",
            "Bytes the CUDA graphs' memory pools added to the device memory held.",
            labels,
            registry=self.registry,
        ).labels(agent)

        def histogram(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(name, doc, labels, buckets=buckets, registry=self.registry).labels(agent)

        self.batch_rows = histogram("colo_agent_batch_rows", "Rows per batch run on the device.", _ROW_BUCKETS)
        self.batch_requests = histogram(
            "colo_agent_batch_requests", "Requests merged into one device batch.", _ROW_BUCKETS
        )
        self.latency = histogram(
            "colo_agent_request_latency_seconds", "Request received to answered.", _LATENCY_BUCKETS
        )
        self.forward = histogram("colo_agent_forward_seconds", "Device time per batch.", _LATENCY_BUCKETS)
        self.requests = Counter(
            "colo_agent_requests", "Answered requests.", labels, registry=self.registry
        ).labels(agent)
        self.rows = Counter("colo_agent_rows", "Rows of answered requests.", labels, registry=self.registry).labels(
            agent
        )
        errors = Counter("colo_agent_errors", "Failed requests by kind.", ["agent", "kind"], registry=self.registry)
        self._errors = {kind: errors.labels(agent, kind) for kind in ERROR_KINDS}
        phases = Histogram(
            "colo_agent_phase_seconds",
            "Time an answered request spent in each phase (parse, tokenize, queue, to_device, forward, "
            "to_host, serialize).",
            ["agent", "phase"],
            buckets=_PHASE_BUCKETS,
            registry=self.registry,
        )
        self._phases = {phase: phases.labels(agent, phase) for phase in PHASES}

    def phase(self, name: str, secs: float) -> None:
        """Observe ``secs`` spent in phase ``name`` (one of PHASES); negative clock noise counts as 0."""
        self._phases[name].observe(max(0.0, secs))

    def error(self, kind: str) -> None:
        """Count one failed request of ``kind`` (one of ERROR_KINDS)."""
        self._errors[kind].inc()

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return bytes(generate_latest(self.registry))


def phase_totals(text: str) -> dict[str, tuple[float, float]]:
    """``(seconds, requests)`` observed so far in each phase, from a ``/metrics`` text (every agent in it
    summed); phases never observed are left out. Two readings subtracted give one stretch of requests."""
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    for line in text.splitlines():
        for suffix, into in (("_sum", sums), ("_count", counts)):
            prefix = f"colo_agent_phase_seconds{suffix}{{"
            if line.startswith(prefix) and 'phase="' in line:
                phase = line.split('phase="', 1)[1].split('"', 1)[0]
                into[phase] = into.get(phase, 0.0) + float(line.rsplit(" ", 1)[1])
    return {p: (sums.get(p, 0.0), counts[p]) for p in PHASES if counts.get(p)}


def phase_means_ms(text: str, since: str | None = None) -> dict[str, float]:
    """Mean milliseconds per request of each phase, from a ``/metrics`` text (every agent in it summed);
    ``since``: an earlier ``/metrics`` text of the same agents, whose requests are left out. Phases with no
    request are left out."""
    now = phase_totals(text)
    before = phase_totals(since) if since is not None else {}
    means: dict[str, float] = {}
    for phase, (secs, count) in now.items():
        was_secs, was_count = before.get(phase, (0.0, 0.0))
        if count > was_count:
            means[phase] = (secs - was_secs) / (count - was_count) * 1000.0
    return means
