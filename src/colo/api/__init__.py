"""colo.api."""
