"""``GET /metrics``: Prometheus text, built at scrape time from snapshots (nothing is kept between scrapes).

Names follow what DCGM-exporter and node-exporter users expect: a ``colo_`` prefix, the unit as a suffix
(``_bytes``, ``_celsius``, ``_watts``, ``_percent``), ``_total`` for counters; labels ``agent``, ``gpu`` (the
NVML index, or ``node:index`` off the local node) and ``uuid``.

==============================================  =======  ===================================================
metric                                          type     meaning
==============================================  =======  ===================================================
colo_agent_memory_used_bytes                    gauge    GPU memory the agent's process uses now
colo_agent_memory_peak_bytes                    gauge    highest use seen since it started
colo_agent_memory_limit_bytes                   gauge    its MPS pinned-memory limit (the plan)
colo_agent_memory_requirement_bytes             gauge    what its models need (before the margin)
colo_agent_state                                gauge    1 for the agent's current state (label ``state``)
colo_agent_up                                   gauge    1 when RUNNING
colo_agent_restarts_total                       counter  restarts since the orchestrator started
colo_gpu_memory_total_bytes / _used / _free     gauge    per GPU (NVML)
colo_gpu_utilization_percent                    gauge    SM utilisation (like DCGM_FI_DEV_GPU_UTIL)
colo_gpu_memory_utilization_percent             gauge    memory-bandwidth utilisation
colo_gpu_temperature_celsius                    gauge
colo_gpu_power_watts                            gauge
colo_gpu_process_memory_used_bytes              gauge    per GPU process (``pid``, ``agent`` when known)
colo_mps_daemon_up                              gauge    1 when the GPU's MPS control daemon runs
colo_mps_server_active                          gauge    1 when its server is ACTIVE (0: INITIALIZING/FAULT)
colo_mps_clients                                gauge    MPS client processes on the GPU
colo_mps_enabled                                gauge    1 when MPS is in use
colo_plan_agents / colo_plan_agents_unplaced    gauge    agents placed / left out by the plan
colo_plan_calculated_bytes / _margin / _allocated gauge  plan totals
colo_plan_gpu_allocated_bytes                   gauge    limits placed on each GPU
colo_plan_gpu_mps                               gauge    1 when the plan runs MPS on the GPU (policy.mps)
colo_gpu_scrape_ok                              gauge    0 when NVML could not be read (see /gpu/info error)
colo_mps_recoveries_total                       counter  finished MPS recoveries of a GPU (``uuid``, ``trigger``)
colo_mps_recovery_detect_seconds                gauge    the last recovery's detection time (failure -> seen)
colo_mps_recovery_recover_seconds               gauge    the last recovery's time from detection to all RUNNING
colo_agent_usage_window_peak_bytes              gauge    the agent's GPU memory high-water mark over its last
                                                         usage-history window (``colo tune`` reads the history)
colo_agent_usage_window_peak_ratio              gauge    that high-water mark / its limit
colo_agent_usage_window_oom                     gauge    out-of-memory signs in that window
colo_agent_largest_batch_rows / _seq_len        gauge    the largest batch it had run, per ``model`` (built-in)
colo_usage_history_rows                         gauge    rows in the usage history (bounded by the policy)
==============================================  =======  ===================================================
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from colo.gpu.poller import GpuState
from colo.plan.types import GpuSlot, Plan
from colo.supervise.snapshots import AgentStatus, RecoverySummary, UsageSample
from colo.supervise.state import AgentState


@dataclass(frozen=True)
class MetricsInput:
    """What one scrape reads: agents, the plan (None when unreadable) and the GPU state."""

    statuses: Sequence[AgentStatus]
    plan: Plan | None
    gpu: GpuState
    recoveries: Sequence[RecoverySummary] = ()
    usage: Sequence[UsageSample] = ()
    usage_rows: int | None = None


def gpu_label(key: str | None) -> str:
    """``"local:0"`` -> ``"0"`` (like DCGM's ``gpu`` label); other nodes keep ``"node:index"``."""
    if not key:
        return ""
    node, _, index = key.partition(":")
    return index if node == "local" and index else key


def _slot_uuid(slot: GpuSlot) -> str:
    return slot.uuid or ""


class ColoCollector(Collector):
    """A prometheus-client collector: calls ``read()`` at each scrape and yields metric families."""

    def __init__(self, read: Callable[[], MetricsInput]) -> None:
        self._read = read

    def describe(self) -> list[Metric]:
        # Nothing described up front: families depend on the snapshot, so registration must not collect.
        return []

    def collect(self) -> Iterator[Metric]:
        data = self._read()
        yield from self._agents(data.statuses)
        yield from self._gpus(data.gpu, data.statuses)
        if data.plan is not None:
            yield from self._plan(data.plan)
        yield from self._recoveries(data.recoveries)
        yield from self._usage(data.usage, data.usage_rows)

    def _usage(self, usage: Sequence[UsageSample], rows: int | None) -> Iterator[Metric]:
        labels = ["agent", "gpu"]
        peak = GaugeMetricFamily(
            "colo_agent_usage_window_peak_bytes",
            "The agent's GPU memory high-water mark over its last usage-history window (NVML, process tree).",
            labels=labels,
        )
        ratio = GaugeMetricFamily(
            "colo_agent_usage_window_peak_ratio", "That high-water mark divided by the agent's limit.", labels=labels
        )
        oom = GaugeMetricFamily(
            "colo_agent_usage_window_oom", "Out-of-memory signs in the agent's last window.", labels=labels
        )
        brows = GaugeMetricFamily(
            "colo_agent_largest_batch_rows", "Rows of the largest batch the agent had run.", labels=["agent", "model"]
        )
        bseq = GaugeMetricFamily(
            "colo_agent_largest_batch_seq_len",
            "Padded length of the largest batch the agent had run.",
            labels=["agent", "model"],
        )
        for u in usage:
            values = [u.agent, gpu_label(u.gpu)]
            peak.add_metric(values, u.peak_bytes)
            if u.limit_bytes:
                ratio.add_metric(values, u.peak_bytes / u.limit_bytes)
            oom.add_metric(values, u.oom)
            for x in u.shapes:
                brows.add_metric([u.agent, x.model], x.rows)
                bseq.add_metric([u.agent, x.model], x.seq_len)
        yield from (peak, ratio, oom, brows, bseq)
        if rows is not None:
            total = GaugeMetricFamily("colo_usage_history_rows", "Rows in the usage history (state database).")
            total.add_metric([], rows)
            yield total

    def _recoveries(self, done: Sequence[RecoverySummary]) -> Iterator[Metric]:
        labels = ["uuid", "trigger"]
        total = CounterMetricFamily(
            "colo_mps_recoveries_total", "Finished MPS recoveries of a GPU, by trigger.", labels=labels
        )
        detect = GaugeMetricFamily(
            "colo_mps_recovery_detect_seconds",
            "The last MPS recovery's detection time: failed part last seen healthy -> failure seen (upper bound).",
            labels=labels,
        )
        recover = GaugeMetricFamily(
            "colo_mps_recovery_recover_seconds",
            "The last MPS recovery's time from detection to every agent of the GPU RUNNING again.",
            labels=labels,
        )
        counts: dict[tuple[str, str], int] = {}
        last: dict[tuple[str, str], RecoverySummary] = {}
        for r in done:
            key = (r.gpu_uuid, r.trigger)
            counts[key] = counts.get(key, 0) + 1
            last[key] = r
        for key, n in sorted(counts.items()):
            total.add_metric(list(key), float(n))
            r = last[key]
            if r.detect_secs is not None:
                detect.add_metric(list(key), r.detect_secs)
            recover.add_metric(list(key), r.recover_secs)
        yield from (total, detect, recover)

    def _agents(self, statuses: Sequence[AgentStatus]) -> Iterator[Metric]:
        labels = ["agent", "gpu", "uuid"]
        used = GaugeMetricFamily(
            "colo_agent_memory_used_bytes", "GPU memory the agent's process uses now.", labels=labels
        )
        peak = GaugeMetricFamily(
            "colo_agent_memory_peak_bytes", "Highest GPU memory use seen for the agent.", labels=labels
        )
        limit = GaugeMetricFamily(
            "colo_agent_memory_limit_bytes", "The agent's MPS pinned device memory limit.", labels=labels
        )
        need = GaugeMetricFamily(
            "colo_agent_memory_requirement_bytes",
            "Memory the agent's models need, before the safety margin.",
            labels=labels,
        )
        state = GaugeMetricFamily("colo_agent_state", "1 for the agent's current state.", labels=["agent", "state"])
        up = GaugeMetricFamily("colo_agent_up", "1 when the agent is RUNNING (started and healthy).", labels=["agent"])
        restarts = CounterMetricFamily("colo_agent_restarts", "Restarts of the agent.", labels=["agent"])
        for s in statuses:
            values = [s.name, gpu_label(s.gpu), s.gpu_uuid or ""]
            if s.memory_used_bytes is not None:
                used.add_metric(values, s.memory_used_bytes)
            if s.memory_peak_bytes is not None:
                peak.add_metric(values, s.memory_peak_bytes)
            limit.add_metric(values, s.limit_bytes)
            need.add_metric(values, s.requirement_bytes)
            for st in AgentState:
                state.add_metric([s.name, st.value], 1.0 if s.state == st else 0.0)
            up.add_metric([s.name], 1.0 if s.state == AgentState.RUNNING else 0.0)
            restarts.add_metric([s.name], s.restarts)
        yield from (used, peak, limit, need, state, up, restarts)

    def _gpus(self, gpu: GpuState, statuses: Sequence[AgentStatus]) -> Iterator[Metric]:
        labels = ["gpu", "uuid", "name"]
        fams = {
            "total": GaugeMetricFamily("colo_gpu_memory_total_bytes", "GPU memory.", labels=labels),
            "used": GaugeMetricFamily("colo_gpu_memory_used_bytes", "GPU memory in use (NVML).", labels=labels),
            "free": GaugeMetricFamily("colo_gpu_memory_free_bytes", "GPU memory free (NVML).", labels=labels),
            "util": GaugeMetricFamily("colo_gpu_utilization_percent", "SM utilisation.", labels=labels),
            "mutil": GaugeMetricFamily(
                "colo_gpu_memory_utilization_percent", "Memory-bandwidth utilisation.", labels=labels
            ),
            "temp": GaugeMetricFamily("colo_gpu_temperature_celsius", "GPU temperature.", labels=labels),
            "power": GaugeMetricFamily("colo_gpu_power_watts", "GPU power draw.", labels=labels),
        }
        proc = GaugeMetricFamily(
            "colo_gpu_process_memory_used_bytes",
            "GPU memory of one process.",
            labels=["gpu", "uuid", "pid", "agent", "mps_client"],
        )
        daemon_up = GaugeMetricFamily(
            "colo_mps_daemon_up", "1 when the GPU's MPS control daemon runs.", labels=["gpu", "uuid"]
        )
        server_active = GaugeMetricFamily(
            "colo_mps_server_active",
            "1 when the GPU's MPS server is ACTIVE.",
            labels=["gpu", "uuid", "pid", "status"],
        )
        clients = GaugeMetricFamily("colo_mps_clients", "MPS client processes on the GPU.", labels=["gpu", "uuid"])
        by_pid = {s.pid: s.name for s in statuses if s.pid is not None}
        for g in gpu.info.get("gpus", []):
            index, uuid = str(g.get("index", "")), str(g.get("uuid", ""))
            values = [index, uuid, str(g.get("name", ""))]
            for key, field in (
                ("total", "memory_total_bytes"),
                ("used", "memory_used_bytes"),
                ("free", "memory_free_bytes"),
                ("util", "sm_util_pct"),
                ("mutil", "mem_util_pct"),
                ("temp", "temperature_c"),
                ("power", "power_w"),
            ):
                reading = g.get(field)
                if isinstance(reading, int | float):
                    fams[key].add_metric(values, float(reading))
            daemon = g.get("mps")
            if isinstance(daemon, dict):
                daemon_up.add_metric([index, uuid], 1.0 if daemon.get("running") else 0.0)
                servers = daemon.get("servers") or []
                clients.add_metric([index, uuid], sum(len(sv.get("client_pids") or []) for sv in servers))
                for sv in servers:
                    status = str(sv.get("status", ""))
                    server_active.add_metric(
                        [index, uuid, str(sv.get("pid", "")), status], 1.0 if status == "ACTIVE" else 0.0
                    )
        for p in gpu.info.get("processes", []):
            used = p.get("used_memory_bytes")
            if not isinstance(used, int):
                continue
            pid = int(p.get("pid", 0))
            proc.add_metric(
                [
                    str(p.get("gpu_index", "")),
                    str(p.get("gpu_uuid", "")),
                    str(pid),
                    by_pid.get(pid, ""),
                    "1" if p.get("is_mps_client") else "0",
                ],
                used,
            )
        enabled = GaugeMetricFamily(
            "colo_mps_enabled", "1 when MPS is in use.", value=1.0 if gpu.info.get("mps_enabled") else 0.0
        )
        ok = GaugeMetricFamily("colo_gpu_scrape_ok", "0 when NVML could not be read.", value=0.0 if gpu.error else 1.0)
        yield from (*fams.values(), proc, daemon_up, server_active, clients, enabled, ok)

    def _plan(self, plan: Plan) -> Iterator[Metric]:
        s = plan.summary
        yield GaugeMetricFamily("colo_plan_agents", "Agents placed by the plan.", value=len(plan.placed))
        yield GaugeMetricFamily("colo_plan_agents_unplaced", "Agents the plan left out.", value=len(plan.unplaced))
        yield GaugeMetricFamily(
            "colo_plan_calculated_bytes", "Sum of placed agents' requirements.", value=s.calculated_bytes
        )
        yield GaugeMetricFamily("colo_plan_margin_bytes", "Sum of placed agents' margins.", value=s.margin_bytes)
        yield GaugeMetricFamily(
            "colo_plan_allocated_bytes", "Sum of placed agents' MPS limits.", value=s.allocated_bytes
        )
        yield GaugeMetricFamily(
            "colo_plan_gpu_memory_bytes", "Memory of the GPUs planned for.", value=s.gpu_memory_bytes
        )
        per_gpu = GaugeMetricFamily(
            "colo_plan_gpu_allocated_bytes", "MPS limits placed on the GPU.", labels=["gpu", "uuid"]
        )
        mps = GaugeMetricFamily(
            "colo_plan_gpu_mps", "1 when the plan runs MPS on the GPU (policy.mps).", labels=["gpu", "uuid"]
        )
        for g in plan.gpus:
            per_gpu.add_metric([gpu_label(g.gpu.key), _slot_uuid(g.gpu)], g.allocated_bytes)
            mps.add_metric([gpu_label(g.gpu.key), _slot_uuid(g.gpu)], 1.0 if g.mps else 0.0)
        yield per_gpu
        yield mps


def registry_for(read: Callable[[], MetricsInput]) -> CollectorRegistry:
    """A private registry holding only colo's collector (no process/platform collectors of the API itself)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ColoCollector(read))
    return registry
