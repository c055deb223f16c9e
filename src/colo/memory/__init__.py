"""colo.memory."""
