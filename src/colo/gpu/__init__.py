"""The GPU layer: NVML snapshots (``colo.gpu.nvml``), the one NVML sampling loop (``colo.gpu.sampler``) and CUDA
MPS daemons (``colo.gpu.mps``).

Only ``colo.gpu.nvml`` imports pynvml; only ``colo.gpu.mps.control`` runs
``nvidia-cuda-mps-control``. Fakes beside them (``colo.gpu.fake_nvml``, ``colo.gpu.mps.fake``) are for tests only.
Import the submodules directly; this package imports nothing heavy.
"""
