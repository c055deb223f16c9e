"""colo.modelserver."""
