"""colo.cli."""
