"""Planted circuits in a larger GPT-2 at weight, head and edge level vs 10 random same-size circuits.

Run: ``OMP_NUM_THREADS=1 PYTHONPATH=$PWD python benchmarks/ground_truth_planted.py [level ...]``
(a few minutes on one core; levels: the keys of ``RUNS``). Prints one JSON line per run:
precision/recall of the recovered circuit against the planted one, faithfulness (top-1
agreement of the circuit alone with the teacher = the model restricted to the planted
circuit), the full model's agreement and 10 random circuits'; the weight runs add the
magnitude-pruning baseline at the planted density, the edge run the precision/recall
against every planted edge (``planted_*``; the ground truth is the planted edges that
change the teacher's logits).
"""

from __future__ import annotations

import json
import sys
import time

import torch

from modeopt_masks.circuits.planted import recover_planted

RUNS: dict[str, dict] = {
    "weight": dict(level="weight", n_layer=2, density=0.15, steps=1000),
    "weight_hard_concrete": dict(level="weight", n_layer=2, density=0.15, steps=1000,
                                 method="hard_concrete"),
    "weight_gaussian": dict(level="weight", n_layer=2, density=0.15, steps=1000,
                            equal_magnitude=False),
    "head": dict(level="head", n_layer=4, planted=4, steps=300, restarts=3),
    "edge": dict(level="edge", n_layer=2, planted=2, steps=600, restarts=3),
}


def main(names: list[str]) -> None:
    torch.set_num_threads(1)
    for name in names:
        start = time.perf_counter()
        result = recover_planted(n_random=10, **RUNS[name])
        print(json.dumps({"run": name, **RUNS[name], **result,
                          "seconds": round(time.perf_counter() - start, 1)}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:] or list(RUNS))
