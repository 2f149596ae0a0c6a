"""Planted circuits in a larger GPT-2: head- and edge-mask recovery vs 10 random same-size circuits.

Run: ``PYTHONPATH=$PWD python benchmarks/ground_truth_planted.py`` (a few minutes on one core).
Prints one JSON line per level: precision/recall of the recovered circuit against the planted
one, faithfulness (top-1 agreement of the circuit alone with the teacher = the model
restricted to the planted circuit), the full model's agreement and 10 random circuits'.
"""

from __future__ import annotations

import json
import sys

import torch

from modeopt_masks.circuits.planted import recover_planted

RUNS = {
    "head": dict(n_layer=4, planted=4, steps=300),
    "edge": dict(n_layer=2, planted=2, steps=600),
}


def main(levels: list[str]) -> None:
    torch.set_num_threads(1)
    for level in levels:
        result = recover_planted(level, n_random=10, **RUNS[level])  # type: ignore[arg-type]
        print(json.dumps({"level": level, **RUNS[level], **result}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:] or list(RUNS))
