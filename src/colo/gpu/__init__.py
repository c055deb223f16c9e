"""colo.gpu."""
