"""Induction ground truth: a 2-layer attention-only model, its edge circuit and ablations.

Trains the model (``train_induction_model``: 8 heads per layer, with a concave penalty on
the heads' output norms so that one previous-token head and one induction head do the
work) or loads ``tests/fixtures/induction_tiny.pt`` (``--write-fixture`` rewrites it;
``--train`` trains afresh with ``--seed`` and ``--head-sparsity``, 0 for the plain model
that spreads induction over every layer-1 head). Finds the two heads from attention
patterns, learns edge masks on the copying loss (hard concrete + L0) and reports:
circuit size (fraction of edges), whether it holds the K-composition edge (previous-token
head -> induction head's key), precision/recall against the textbook circuit, copying
accuracy of the circuit alone (faithfulness) and with the circuit ablated, and the same
for 10 random same-size edge sets; EAP's top-k edges (k = circuit size) for comparison.

    OMP_NUM_THREADS=1 python benchmarks/ground_truth_induction.py
    OMP_NUM_THREADS=1 python benchmarks/ground_truth_induction.py --train --seed 1
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import time

import torch

from modeopt_masks.circuits import EdgeMaskedModel, TinyTransformer
from modeopt_masks.circuits.eap import edge_attribution_patching, top_edges
from modeopt_masks.circuits.ground_truth import (
    copying_accuracy,
    evaluate_with_edges,
    evaluate_without_edges,
    fit_edges,
    head_output_norms,
    heads_in_use,
    induction_batch,
    induction_circuit,
    induction_head,
    induction_loss,
    precision_recall,
    previous_token_head,
    random_edge_sets,
    train_induction_model,
)

FIXTURE = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "induction_tiny.pt"
VOCAB, HALF, HEADS, D_MODEL, D_HEAD = 24, 8, 8, 64, 16


def ablation_report(edges: EdgeMaskedModel, circuit: list[tuple[str, str]], ids: torch.Tensor,
                    copy: torch.Tensor, truth: list[tuple[str, str]], k_comp: tuple[str, str]) -> dict:
    """Size, K-composition, P/R, alone / ablated accuracy of ``circuit`` and of 10 random same-size sets."""

    def acc(out: torch.Tensor) -> float:
        return copying_accuracy(out, ids, copy)

    rand = random_edge_sets(edges, len(circuit), 10, seed=0)
    rand_ablated = [evaluate_without_edges(edges, s, acc, ids) for s in rand]
    return {
        "edges": len(circuit),
        "fraction": round(len(circuit) / edges.num_edges, 4),
        "contains_k_composition": k_comp in set(circuit),
        "precision_recall_vs_textbook": [round(x, 3) for x in precision_recall(circuit, truth)],
        "missed_textbook_edges": sorted(set(truth) - set(circuit)),
        "alone_accuracy": round(evaluate_with_edges(edges, circuit, acc, ids), 3),
        "ablated_accuracy": round(evaluate_without_edges(edges, circuit, acc, ids), 3),
        "random_alone_accuracy_median": round(statistics.median(
            evaluate_with_edges(edges, s, acc, ids) for s in rand), 3),
        "random_ablated_accuracy": [round(x, 3) for x in rand_ablated],
        "random_ablated_accuracy_median": round(statistics.median(rand_ablated), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--write-fixture", action="store_true")
    parser.add_argument("--train", action="store_true", help="train afresh instead of loading the fixture")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--head-sparsity", type=float, default=0.1)
    parser.add_argument("--steps", type=int, default=300, help="edge-mask training steps")
    parser.add_argument("--l0-lambda", type=float, default=1.0)
    parser.add_argument("--mask-seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    result: dict = {}
    if args.train or args.write_fixture or not FIXTURE.exists():
        start = time.perf_counter()
        net, train_acc = train_induction_model(VOCAB, HALF, HEADS, D_MODEL, seed=args.seed, d_head=D_HEAD,
                                               head_sparsity=args.head_sparsity)
        result["model_training_seconds"] = round(time.perf_counter() - start, 1)
        result["model"] = {"seed": args.seed, "head_sparsity": args.head_sparsity,
                           "training_accuracy": round(train_acc, 3)}
        if args.write_fixture:
            FIXTURE.parent.mkdir(parents=True, exist_ok=True)
            net.save(FIXTURE)
    else:
        net = TinyTransformer.load(FIXTURE)
        result["model"] = "tests/fixtures/induction_tiny.pt"
    gen = torch.Generator().manual_seed(123)
    ids, copy = induction_batch(256, HALF, VOCAB, gen)
    a = torch.randint(0, VOCAB, (64, HALF), generator=gen)
    prev, prev_score = previous_token_head(net, torch.cat([a, a], 1))
    ind, ind_score = induction_head(net, torch.cat([a, a], 1))
    norms = head_output_norms(net, ids)
    with torch.no_grad():
        full_acc = copying_accuracy(net(ids), ids, copy)

    edges = EdgeMaskedModel(net, init_percentage=0.9)
    train = [induction_batch(64, HALF, VOCAB, gen) for _ in range(8)]
    step = iter(range(10**9))

    def loss(e: EdgeMaskedModel) -> torch.Tensor:
        x, c = train[next(step) % len(train)]
        return induction_loss(e(x), x, c)

    torch.manual_seed(args.mask_seed)  # the gates' noise: the same whether trained here or loaded
    start = time.perf_counter()
    fit_edges(edges, loss, args.steps, lr=0.1, l0_lambda=args.l0_lambda)
    seconds = time.perf_counter() - start
    found = edges.edge_list()
    truth = induction_circuit(prev, ind)
    k_comp = (f"a0.h{prev}", f"a1.h{ind}.k")

    scores = edge_attribution_patching(edges, lambda out: induction_loss(out, ids, copy), (ids,))
    corrupt = torch.randint(0, VOCAB, ids.shape, generator=gen)  # same token statistics, no repeat
    patched = edge_attribution_patching(edges, lambda out: induction_loss(out, ids, copy), (ids,),
                                        corrupt_args=(corrupt,))
    result.update({
        "full_accuracy": round(full_acc, 3),
        "chance": round(1 / VOCAB, 3),
        "head_output_rms": [[round(float(x), 2) for x in row] for row in norms],
        "heads_in_use": heads_in_use(norms),
        "prev_token_head": [prev, round(prev_score, 3)],
        "induction_head": [ind, round(ind_score, 3)],
        "edges_total": edges.num_edges,
        "hard_concrete": ablation_report(edges, found, ids, copy, truth, k_comp),
        "mask_training_seconds": round(seconds, 1),
        "eap_topk": ablation_report(edges, top_edges(scores, len(found)), ids, copy, truth, k_comp),
        "eap_corrupted_topk": ablation_report(edges, top_edges(patched, len(found)), ids, copy,
                                              truth, k_comp),
        "circuit": found,
    })
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
