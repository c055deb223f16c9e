"""docs/api.md's metrics table names every metric ``colo.api.metrics`` exposes, by its full name."""

from __future__ import annotations

import re
from pathlib import Path

import colo.api.metrics

ROOT = Path(__file__).resolve().parents[3]


def exposed_names() -> set[str]:
    """Every family the collector builds, as Prometheus exposes it (a counter's name ends in ``_total``)."""
    source = Path(colo.api.metrics.__file__).read_text()
    families = re.findall(r'(Gauge|Counter)MetricFamily\(\s*"(colo_\w+)"', source)
    assert len(families) == source.count("MetricFamily("), "a metric family whose name this test cannot read"
    return {name if kind == "Gauge" or name.endswith("_total") else f"{name}_total" for kind, name in families}


def test_every_metric_is_in_the_docs_table() -> None:
    names = exposed_names()
    assert len(names) >= 30 and "colo_mps_recoveries_total" in names and "colo_agent_restarts_total" in names
    table = "\n".join(
        line for line in (ROOT / "docs" / "api.md").read_text().splitlines() if line.startswith("| `colo_")
    )
    missing = sorted(n for n in names if f"`{n}`" not in table)
    assert missing == [], f"docs/api.md's metrics table lacks {missing}"
