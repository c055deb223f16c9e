"""colo.bench."""
