"""What each model really needs on the GPU: catalog, build, estimate, profile (child side), database, resolve.

- :mod:`colo.memory.catalog` — exact HF architecture configs as data (``arch_config``, ``task_of``);
- :mod:`colo.memory.build` — ``build`` (local weights, else random weights of the catalog architecture),
  ``example_inputs``, ``run_worst_case``;
- :mod:`colo.memory.estimate` — the offline estimator (meta-device build + formulas), always "estimate";
- :mod:`colo.profiling.protocol` / :mod:`colo.profiling.child` — the profiling child and its protocol (the
  NVML-sampling parent is :mod:`colo.profiling`, one layer up);
- :mod:`colo.memory.db` — the JSON model database with provenance and observed usage;
- :mod:`colo.memory.resolve` — measured > estimated > declared for the planner (``memory_for_plan``);
- :mod:`colo.memory.seed_export` — the seed's ``model_config.json``.

Import the submodules directly; nothing here imports torch at import time.
"""
