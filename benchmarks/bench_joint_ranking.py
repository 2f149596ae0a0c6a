"""Which ranking of the joint search's candidates agrees with held-out perplexity?

SmolLM2-135M, gradnas over heads, MLP, hidden size and depth at one params target, the fine
grid (hidden and depth each ``1.0, 0.97, 0.94``). For every candidate of one ``prune`` call
(ranking rows 2 x 256 as in ``bench_llm_prune.py``): the LM loss and the KL to the unpruned
model on those 2 rows and on 8 rows, and the perplexity on the 16 x 256 evaluation rows
(disjoint slices of ``pydoc_data.topics``); then the Spearman correlation of each ranking
with the perplexity. One thread; about 15 minutes at load 5.

    python benchmarks/bench_joint_ranking.py [--target 0.8]
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]


def spearman(a: list[float], b: list[float]) -> float:
    """Rank correlation (no ties expected)."""
    ra = {i: r for r, i in enumerate(sorted(range(len(a)), key=a.__getitem__))}
    rb = {i: r for r, i in enumerate(sorted(range(len(b)), key=b.__getitem__))}
    n = len(a)
    return 1 - 6 * sum((ra[i] - rb[i]) ** 2 for i in range(n)) / (n * (n * n - 1))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", type=float, default=0.8)
    args = parser.parse_args(argv)

    import torch
    from bench_llm_prune import AXES_CONFIGS, AXIS_RATIOS, split_tokens
    from bench_oneshot import load_model, perplexity

    import modeopt_masks.searchers.joint as joint
    from modeopt_masks.pruning import prune

    torch.set_num_threads(1)
    data = split_tokens(16, 0, 16, 256)
    rows = [{"input_ids": r[None], "labels": r[None]} for r in data["cal"]]
    cal, rank = rows[:8], rows[8:]
    dense = load_model()
    wide = joint.CandidateRanker(dense, rank, "kl")
    records: list[dict] = []
    ranker_call = joint.CandidateRanker.__call__

    def spy(self, model):
        scores = ranker_call(self, model)
        eight = ranker_call(wide, model)
        row = {"kl2": scores["kl"], "lm2": scores["loss"], "kl8": eight["kl"],
               "lm8": eight["loss"], "eval_ppl": perplexity(model, data["eval"])}
        records.append(row)
        print(json.dumps(row), flush=True)
        return scores

    joint.CandidateRanker.__call__ = spy  # type: ignore[method-assign]
    _, result = prune(copy.deepcopy(dense), ("gradnas", AXES_CONFIGS["joint_fine"]),
                      constraints={"params": f"{args.target:.0%}"},
                      config={"data_loader": cal, "progress": False, "eval_loader": rank[:2],
                              "axis_ratios": AXIS_RATIOS["joint_fine"]})
    feasible = [c for c in result.candidates if c.get("feasible")]
    ppl = [r["eval_ppl"] for r in records]
    print(json.dumps({"target": args.target, "candidates": [
        {**c, **r} for c, r in zip(feasible, records, strict=True)],
        "spearman_vs_eval_ppl": {k: spearman([r[k] for r in records], ppl)
                                 for k in ("lm2", "kl2", "lm8", "kl8")}}))


if __name__ == "__main__":
    main()
