"""Search algorithms used by ``prune``."""
