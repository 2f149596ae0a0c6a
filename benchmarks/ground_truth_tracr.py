"""Tracr ground truth: recover the compiled edges of ``reverse`` and ``frac_prevs``.

Loads the cached compiled programs (``tests/fixtures/tracr_*.npz``, made by
``ground_truth_tracr_compile.py``), reads the true edges off the weights
(:func:`compiled_edges`) and reports, per method (hard-concrete edge masks, ACDC,
EAP top-k), precision/recall against them, the accuracy of the circuit alone
(the compiled model is 100% by construction) and the accuracy of 10 random
same-size edge sets.

    OMP_NUM_THREADS=1 python benchmarks/ground_truth_tracr.py [--steps 300 --l0-lambda 0.01 --lr 0.05 --seed 0]
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
    fixture_accuracy,
    fixture_batches,
    functional_edges,
    recover_tracr_edges,
)

FIXTURES = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures"


def run(name: str, steps: int, l0_lambda: float, lr: float = 0.05, seed: int = 0) -> dict:
    fx = load_tracr_fixture(str(FIXTURES / f"tracr_{name}.npz"))
    batches = fixture_batches(fx)
    with torch.no_grad():
        refs = [fx.model(b) for b in batches]
    probe = EdgeMaskedModel(fx.model)
    truth = compiled_edges(probe)
    functional = functional_edges(probe, truth, batches)
    probe.remove_hooks()

    def report(edges: EdgeMaskedModel, found: list, seconds: float) -> dict:
        edges.eval().set_edges(found)
        p, r = precision_recall(found, truth)
        fp, fr = precision_recall(found, functional)
        return {"edges": len(found), "precision": p, "recall": r,
                "functional_precision": fp, "functional_recall": fr,
                "circuit_accuracy": fixture_accuracy(fx, edges), "seconds": round(seconds, 1),
                "missed": sorted(set(truth) - set(found)), "extra": sorted(set(found) - set(truth))}

    out: dict = {"program": name, "edges_total": None, "true_edges": len(truth),
                 "functional_edges": len(functional),
                 "inert_compiled_edges": sorted(set(truth) - set(functional))}
    start = time.perf_counter()
    edges, found = recover_tracr_edges(fx, steps=steps, l0_lambda=l0_lambda, lr=lr, seed=seed)
    out["edges_total"] = edges.num_edges
    out["hard_concrete"] = report(edges, found, time.perf_counter() - start)
    edges.remove_hooks()

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
    out["eap_topk"] = report(edges, top_edges(scores, len(truth)), time.perf_counter() - start)

    rand = []
    for subset in random_edge_sets(edges, len(truth), 10, seed=0):
        edges.set_edges(subset)
        rand.append(fixture_accuracy(fx, edges))
    out["random_same_size_accuracy"] = {"median": statistics.median(rand), "max": max(rand)}
    edges.remove_hooks()
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    # l0_lambda 0.1 (the earlier default) prunes reverse's length path: its MSE is small
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--l0-lambda", type=float, default=0.01)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(json.dumps([run(n, args.steps, args.l0_lambda, args.lr, args.seed) for n in ("reverse", "frac_prevs")],
                     indent=1))


if __name__ == "__main__":
    main()
