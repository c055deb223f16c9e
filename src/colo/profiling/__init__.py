"""Profiling models on a GPU: a fresh child process per model (or agent model set), sampled through NVML.

The child (:mod:`colo.profiling.child`) is pure torch; this package, one layer above ``memory`` and
``gpu``, spawns it (:mod:`.spawn`), samples its per-process NVML memory (the one sampling loop,
:mod:`colo.gpu.sampler`, its peak view) and turns the
outcome into model-database entries with provenance (:mod:`.profiler`).
"""
