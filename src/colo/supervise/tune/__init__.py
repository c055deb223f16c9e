"""colo tune: the limit formula, the tuned-limits file, the usage history and what a proposal reads."""
