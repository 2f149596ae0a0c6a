"""Tracr ground truth: recover the published circuits of ``reverse`` and ``frac_prevs``.

Loads the cached compiled programs (``tests/fixtures/tracr_*.npz``, made by
``ground_truth_tracr_compile.py``) and scores, per method, the recovered edges against
the canonical circuits ([`CANONICAL_EDGES`][modeopt_masks.circuits.tracr.CANONICAL_EDGES], ACDC's
published ground truth; main figure) and against the weight overlap
([`compiled_edges`][modeopt_masks.circuits.tracr.compiled_edges]; secondary), with the accuracy of the circuit alone (the
compiled model is 100% by construction):

* hard-concrete edge masks ([`recover_tracr_edges`][modeopt_masks.circuits.tracr.recover_tracr_edges]), per seed; ``restarts``
  gives, per training run, its hard circuit before and after the single-flip refinement
  and its objective (the lowest wins);
* ACDC (threshold 1e-4 on the max output change) and EAP top-k (k = canonical size),
  both deterministic (no seed);
* 10 random subnetworks of the canonical size.

    OMP_NUM_THREADS=1 python benchmarks/ground_truth_tracr.py --seeds 0 1 2 3 4 [--steps 300 --l0-lambda 1 --lr 0.05 --restarts 2]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import time

import torch

from modeopt_masks.circuits import EdgeMaskedModel, acdc, compiled_edges, load_tracr_fixture
from modeopt_masks.circuits.eap import edge_attribution_patching, top_edges
from modeopt_masks.circuits.ground_truth import precision_recall, random_edge_sets
from modeopt_masks.circuits.tracr import (
    canonical_edges,
    fixture_accuracy,
    fixture_batches,
    recover_tracr_edges,
)

FIXTURES = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures"


def run(name: str, seeds: list[int], steps: int, l0_lambda: float, lr: float, restarts: int) -> dict:
    fx = load_tracr_fixture(str(FIXTURES / f"tracr_{name}.npz"))
    batches = fixture_batches(fx)
    with torch.no_grad():
        refs = [fx.model(b) for b in batches]
    canonical = canonical_edges(name)
    probe = EdgeMaskedModel(fx.model)
    overlap = compiled_edges(probe)
    total = probe.num_edges
    probe.remove_hooks()

    def report(edges: EdgeMaskedModel, found: list, seconds: float) -> dict:
        edges.eval().set_edges(found)
        p, r = precision_recall(found, canonical)
        wp, wr = precision_recall(found, overlap)
        return {"edges": len(found), "precision": p, "recall": r,
                "overlap_precision": round(wp, 3), "overlap_recall": round(wr, 3),
                "circuit_accuracy": round(fixture_accuracy(fx, edges), 4),
                "seconds": round(seconds, 1),
                "missed": sorted(set(canonical) - set(found)),
                "extra": sorted(set(found) - set(canonical))}

    out: dict = {"program": name, "edges_total": total, "canonical_edges": len(canonical),
                 "overlap_edges": len(overlap),
                 "overlap_minus_canonical": sorted(set(overlap) - set(canonical)),
                 "hard_concrete": {}, "restarts": {}}

    for seed in seeds:
        start = time.perf_counter()
        history: list = []
        edges, found = recover_tracr_edges(fx, steps=steps, l0_lambda=l0_lambda, lr=lr, seed=seed,
                                           restarts=restarts, history=history)
        out["hard_concrete"][seed] = report(edges, found, time.perf_counter() - start)
        out["restarts"][seed] = [
            {"trained_pr": precision_recall(h["trained"], canonical),
             "trained_extra": sorted(set(h["trained"]) - set(canonical)),
             "trained_missed": sorted(set(canonical) - set(h["trained"])),
             "refined_pr": precision_recall(h["circuit"], canonical),
             "objective": round(h["objective"], 4)} for h in history]
        edges.remove_hooks()
        print(name, seed, out["hard_concrete"][seed], out["restarts"][seed], flush=True)
    hc = list(out["hard_concrete"].values())
    out["hard_concrete_summary"] = {
        "exact": sum(h["precision"] == h["recall"] == 1.0 for h in hc), "seeds": len(hc),
        "mean_precision": statistics.mean(h["precision"] for h in hc),
        "mean_recall": statistics.mean(h["recall"] for h in hc),
        "min_circuit_accuracy": min(h["circuit_accuracy"] for h in hc),
        "mean_seconds": round(statistics.mean(h["seconds"] for h in hc), 1)}
    runs = [r for rs in out["restarts"].values() for r in rs]
    out["single_run_summary"] = {
        "runs": len(runs),
        "trained_exact": sum(r["trained_pr"] == (1.0, 1.0) for r in runs),
        "refined_exact": sum(r["refined_pr"] == (1.0, 1.0) for r in runs)}

    edges = EdgeMaskedModel(fx.model)
    start = time.perf_counter()

    def distance(e: EdgeMaskedModel) -> float:
        return max(float((e(b) - r)[:, 1:].abs().max()) for b, r in zip(batches, refs, strict=True))

    found = acdc(edges, distance, threshold=1e-4)
    out["acdc"] = report(edges, found, time.perf_counter() - start)

    start = time.perf_counter()
    edges.set_edges(edges.all_edges())
    scores: dict = {}
    for b, r in zip(batches, refs, strict=True):
        target = r.detach()
        s = edge_attribution_patching(edges, lambda o, t=target: (o * t)[:, 1:].sum(), (b,))
        for k, v in s.items():
            scores[k] = scores.get(k, 0.0) + abs(v)
    out["eap_topk"] = report(edges, top_edges(scores, len(canonical)), time.perf_counter() - start)

    rand = []
    for subset in random_edge_sets(edges, len(canonical), 10, seed=0):
        edges.set_edges(subset)
        rand.append(fixture_accuracy(fx, edges))
    out["random_same_size_accuracy"] = {"median": round(statistics.median(rand), 4),
                                        "max": round(max(rand), 4)}
    edges.remove_hooks()
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--l0-lambda", type=float, default=1.0)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--restarts", type=int, default=2)
    parser.add_argument("--programs", nargs="+", default=["reverse", "frac_prevs"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(json.dumps([run(n, args.seeds, args.steps, args.l0_lambda, args.lr, args.restarts) for n in args.programs],
                     indent=1))


if __name__ == "__main__":
    main()
