"""colo.render."""
