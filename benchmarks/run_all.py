"""Run every benchmark and write ``benchmarks/results/results.{json,md}``.

Each benchmark module has ``run(quick) -> dict``; figures are ratios against the
plain model measured in the same run. ``--peers`` adds the peer libraries where
they are installed (see ``benchmarks/bench_peers.py``) and says so where not.

Run: ``python -m benchmarks.run_all [--quick] [--peers]``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import time
from pathlib import Path

import torch

BENCHMARKS = ("bench_masks", "bench_gradnas", "bench_convert")
OUT = Path(__file__).resolve().parent / "results"


def _flatten(prefix: str, value: object, rows: list[tuple[str, str]]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, rows)
    else:
        rows.append((prefix, json.dumps(value) if not isinstance(value, str) else value))


def to_markdown(results: dict) -> str:
    """One table per benchmark: dotted metric name and value."""
    lines = ["# Benchmark results", "",
             f"{results['machine']['platform']}, torch {results['machine']['torch']}, "
             f"{results['machine']['threads']} threads; ratios are against the plain model "
             "in the same process.", ""]
    for name, figures in results["benchmarks"].items():
        rows: list[tuple[str, str]] = []
        _flatten("", figures, rows)
        lines += [f"## {name}", "", "| metric | value |", "| --- | --- |"]
        lines += [f"| {k} | {v} |" for k, v in rows]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small workloads, fewer rounds")
    parser.add_argument("--peers", action="store_true", help="also run installed peer libraries")
    args = parser.parse_args(argv)
    names = list(BENCHMARKS) + (["bench_peers"] if args.peers else [])
    results: dict = {
        "machine": {"platform": platform.platform(), "torch": torch.__version__,
                    "threads": torch.get_num_threads()},
        "quick": args.quick,
        "benchmarks": {},
    }
    for name in names:
        start = time.perf_counter()
        try:
            module = importlib.import_module(f"benchmarks.{name}")
        except ImportError as e:
            results["benchmarks"][name] = {"skipped": str(e)}
            continue
        results["benchmarks"][name] = module.run(args.quick)
        print(f"{name}: done in {time.perf_counter() - start:.0f} s", flush=True)
    OUT.mkdir(exist_ok=True)
    (OUT / "results.json").write_text(json.dumps(results, indent=2))
    (OUT / "results.md").write_text(to_markdown(results))
    print(to_markdown(results))
    return results


if __name__ == "__main__":
    main()
