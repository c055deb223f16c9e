"""Rich views of API snapshots (thin: formatting only)."""
