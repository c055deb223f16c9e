"""colo.workloads."""
