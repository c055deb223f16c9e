"""MPS fault recovery: the phases of a recovery and what the supervisor watches per GPU."""
