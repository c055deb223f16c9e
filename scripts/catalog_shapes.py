"""Precompute the estimator's shape numbers for every catalog model into colo/memory/catalog/shapes.json.

``colo estimate`` and the plan's memory findings read them, so the plain install (no torch) can estimate the
models colo knows. Run after changing the catalog (needs torch + transformers; no GPU):

    python scripts/catalog_shapes.py

``tests/unit/memory/test_memory_shapes.py`` checks the file equals a fresh meta-device build.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from colo.memory import catalog
from colo.memory.estimate import measure_shape

OUT = Path(__file__).resolve().parents[1] / "src" / "colo" / "memory" / "catalog" / "shapes.json"


def main() -> None:
    shapes = {}
    for mid in catalog.known_models():
        d = dataclasses.asdict(measure_shape(mid))
        d["tensors"] = [list(t) for t in d["tensors"]]
        shapes[mid] = d
        print(mid, d["params"])
    doc = {
        "about": "Shape numbers of every catalog model from a meta-device build (scripts/catalog_shapes.py): "
        "what colo's estimator needs, so estimating needs no torch. Not a catalog of models (no 'models' key).",
        "shapes": shapes,
    }
    OUT.write_text(json.dumps(doc, separators=(",", ":"), sort_keys=True) + "\n", encoding="utf-8")
    print(f"wrote {OUT} ({len(shapes)} models)")


if __name__ == "__main__":
    main()
