"""The catalog's precomputed shapes (``catalog/shapes.json``): estimating a catalog model needs no torch,
and gives what a meta-device build gives (``scripts/catalog_shapes.py`` rewrites the file)."""

from __future__ import annotations

import pytest

from colo.errors import ProfileError
from colo.memory import catalog
from colo.memory import estimate as est
from colo.memory.worst_case import WorstCase


def test_every_catalog_model_has_a_precomputed_shape() -> None:
    assert sorted(est.catalog_shapes()) == catalog.known_models()


def test_precomputed_shapes_equal_a_meta_device_build() -> None:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    stale = [m for m in catalog.known_models() if est.catalog_shapes()[m] != est.measure_shape(m)]
    assert stale == [], "rerun `python scripts/catalog_shapes.py`"


def test_estimating_a_catalog_model_needs_no_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_torch(model_id: str, path: str | None) -> est.ModelShape:
        raise ProfileError("estimating needs PyTorch and transformers")

    monkeypatch.setattr(est, "_meta_shape", no_torch)
    est._cached_shape.cache_clear()
    try:
        e = est.estimate(WorstCase("sentence-transformers/all-MiniLM-L6-v2", "float32", 32, 512))
        assert e.nvml_peak_bytes > 1024 * 1024 * 1024  # the newsroom's 0.5 GiB cannot hold batch 32 × 512
        with pytest.raises(ProfileError):
            est.estimate(WorstCase("acme/not-in-the-catalog", path="/nowhere"))
    finally:
        est._cached_shape.cache_clear()
