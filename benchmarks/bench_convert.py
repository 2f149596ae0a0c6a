"""Convert time and memory on a ~110M-parameter model (BERT-base shape, built from a config).

For each mask mode: seconds for ``mm.convert`` and the resident memory it adds, each
mode in a fresh process (memory is only honest there). Masks that learn hold one
float32 per weight; magnitude masks one byte.

Run: ``python -m benchmarks.bench_convert [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from benchmarks.common import current_rss_mb, run_isolated

MODES = ("continuous_sparsification", "hard_concrete", "magnitude_pruning")


def convert_probe(mode: str, quick: str) -> dict:
    """Build the model, convert it with ``mode``; seconds and MiB added (fresh process)."""
    from transformers import BertConfig, BertModel
    from transformers.utils import logging

    import modeopt_masks as mm

    logging.set_verbosity_error()
    torch.set_num_threads(2)
    small = quick == "1"
    config = BertConfig(hidden_size=256 if small else 768, num_hidden_layers=2 if small else 12,
                        num_attention_heads=4 if small else 12,
                        intermediate_size=1024 if small else 3072)
    model = BertModel(config)
    params = sum(p.numel() for p in model.parameters())
    before = current_rss_mb()
    start = time.perf_counter()
    mm.convert(model, mode)
    seconds = time.perf_counter() - start
    added = current_rss_mb() - before
    masked = sum(m.weight.numel() for m in mm.masked_modules(model).values())
    return {"params": params, "masked_weights": masked, "convert_s": round(seconds, 3),
            "added_rss_mb": round(added, 1),
            "bytes_per_masked_weight": round(added * 2**20 / max(masked, 1), 2)}


def run(quick: bool = False) -> dict:
    """Convert figures per mode."""
    return {mode: run_isolated("benchmarks.bench_convert", "convert_probe", mode,
                               "1" if quick else "0") for mode in MODES}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small model")
    json.dump(run(parser.parse_args(argv).quick), sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
