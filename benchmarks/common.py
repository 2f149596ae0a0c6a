"""Timing and memory helpers shared by the benchmarks (ratios in one process)."""

from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable


def timeit(fn: Callable[[], object], repeats: int, warmup: int = 2) -> list[float]:
    """Wall-clock seconds of ``fn`` over ``repeats`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def interleaved_ratio(
    candidate: Callable[[], object], baseline: Callable[[], object], rounds: int, per_round: int = 3
) -> dict[str, float]:
    """Median over rounds of (candidate time / baseline time), timing them alternately.

    Alternating keeps slow drifts of a shared machine out of the ratio.
    """
    timeit(candidate, 0, warmup=2)
    timeit(baseline, 0, warmup=2)
    ratios, cand, base = [], [], []
    for _ in range(rounds):
        b = min(timeit(baseline, per_round, warmup=0))
        c = min(timeit(candidate, per_round, warmup=0))
        ratios.append(c / b)
        cand.append(c)
        base.append(b)
    return {
        "ratio": statistics.median(ratios),
        "candidate_s": statistics.median(cand),
        "baseline_s": statistics.median(base),
    }


def reset_peak_rss() -> None:
    """Reset this process's peak-RSS mark (Linux ``clear_refs`` 5) so a phase is measured alone."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB since start or ``reset_peak_rss``."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
    """Resident memory of this process now, in MiB (Linux)."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def run_isolated(module: str, function: str, *args: str) -> dict:
    """Run ``module.function(*args)`` in a fresh interpreter; return its JSON result.

    Used for peak memory, which only a fresh process measures honestly.
    """
    code = (
        f"import json, sys; from {module} import {function} as f; "
        f"print(json.dumps(f(*sys.argv[1:])))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])
