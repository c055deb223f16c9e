"""colo.supervise."""
