"""Benchmarks: each module has ``run(quick: bool) -> dict`` and a ``__main__``."""
