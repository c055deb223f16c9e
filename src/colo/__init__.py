"""colo: run many model services safely on shared NVIDIA GPUs with CUDA MPS.

Layers, imported in one direction only (a test enforces it)::

    errors, units
      -> spec            (the user's files: colo.yaml, seed-format JSON)
      -> memory, plan    (what models need; pure allocation planning)
      -> gpu, supervise  (NVML, MPS daemons; running and supervising agents)
      -> api, cli, bench, render   (the doors people use)
"""

__version__ = "0.1.0"
