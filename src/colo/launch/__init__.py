"""Starting agent processes: the runner (spawn), the pre-imported launcher (fork) and the health probe."""
