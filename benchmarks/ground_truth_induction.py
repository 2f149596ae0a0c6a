"""Induction ground truth: a 2-layer attention-only model, its edge circuit and ablations.

Trains the model (or loads ``tests/fixtures/induction_tiny.pt``; ``--write-fixture``
rewrites it), finds the previous-token and induction heads from attention patterns,
learns edge masks on the copying loss (hard concrete + L0) and reports:
recovered circuit size (fraction of edges), whether it contains both heads and the
edge between them, precision/recall against the textbook circuit, the copying accuracy
of the circuit alone (faithfulness) and with the circuit ablated, and the same for 10
random same-size edge sets. Also EAP's top-k edges (k = circuit size) for comparison.

    OMP_NUM_THREADS=1 python benchmarks/ground_truth_induction.py
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import time

import torch

from modeopt_masks.circuits import EdgeMaskedModel, TinyTransformer, TinyTransformerConfig
from modeopt_masks.circuits.eap import edge_attribution_patching, top_edges
from modeopt_masks.circuits.ground_truth import (
    copying_accuracy,
    evaluate_with_edges,
    fit_edges,
    induction_batch,
    induction_head,
    induction_loss,
    precision_recall,
    previous_token_head,
    random_edge_sets,
    train_induction_model,
)

FIXTURE = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "induction_tiny.pt"
VOCAB, HALF, HEADS, D_MODEL = 24, 8, 4, 32


def config() -> TinyTransformerConfig:
    return TinyTransformerConfig(vocab_size=VOCAB, d_model=D_MODEL, n_layers=2, n_heads=HEADS,
                                 d_head=D_MODEL // HEADS, d_mlp=0, max_len=2 * HALF, norm=False)


def load_model() -> TinyTransformer:
    net = TinyTransformer(config())
    net.load_state_dict(torch.load(FIXTURE, weights_only=True))
    return net.eval()


def textbook_circuit(prev: int, ind: int) -> list[tuple[str, str]]:
    """Previous-token head -> induction head's key; embeddings into both; induction head -> logits."""
    return [("embed", f"a0.h{prev}.q"), ("embed", f"a0.h{prev}.k"), ("embed", f"a0.h{prev}.v"),
            (f"a0.h{prev}", f"a1.h{ind}.k"), ("embed", f"a1.h{ind}.q"), ("embed", f"a1.h{ind}.v"),
            (f"a1.h{ind}", "logits")]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--write-fixture", action="store_true")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--l0-lambda", type=float, default=1.0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.write_fixture or not FIXTURE.exists():
        start = time.perf_counter()
        net, acc = train_induction_model(VOCAB, HALF, HEADS, D_MODEL, steps=800, batch=32)
        print(f"trained in {time.perf_counter() - start:.1f}s, copying accuracy {acc:.3f}")
        FIXTURE.parent.mkdir(parents=True, exist_ok=True)
        torch.save(net.state_dict(), FIXTURE)
    net = load_model()
    gen = torch.Generator().manual_seed(123)
    ids, copy = induction_batch(128, HALF, VOCAB, gen)
    a = torch.randint(0, VOCAB, (64, HALF), generator=gen)
    prev, prev_score = previous_token_head(net, torch.cat([a, a], 1))
    ind, ind_score = induction_head(net, torch.cat([a, a], 1))
    with torch.no_grad():
        full_acc = copying_accuracy(net(ids), ids, copy)

    edges = EdgeMaskedModel(net, init_percentage=0.9)
    train = [induction_batch(64, HALF, VOCAB, gen) for _ in range(8)]
    step = iter(range(10**9))

    def loss(e: EdgeMaskedModel) -> torch.Tensor:
        x, c = train[next(step) % len(train)]
        return induction_loss(e(x), x, c)

    start = time.perf_counter()
    fit_edges(edges, loss, args.steps, lr=0.1, l0_lambda=args.l0_lambda)
    seconds = time.perf_counter() - start
    found = edges.edge_list()
    truth = textbook_circuit(prev, ind)

    def acc(out: torch.Tensor) -> float:
        return copying_accuracy(out, ids, copy)

    every = edges.all_edges()
    alone = evaluate_with_edges(edges, found, acc, ids)
    ablated = evaluate_with_edges(edges, [e for e in every if e not in set(found)], acc, ids)
    rand = random_edge_sets(edges, len(found), 10, seed=0)
    rand_alone = [evaluate_with_edges(edges, s, acc, ids) for s in rand]
    rand_ablated = [evaluate_with_edges(edges, [e for e in every if e not in set(s)], acc, ids)
                    for s in rand]
    scores = edge_attribution_patching(edges, lambda out: induction_loss(out, ids, copy), (ids,))
    eap = top_edges(scores, len(found))
    # EAP against a corrupted run (same token statistics, no repeat), top 20% of the edges
    corrupt = torch.randint(0, VOCAB, ids.shape, generator=gen)
    patched = edge_attribution_patching(edges, lambda out: induction_loss(out, ids, copy), (ids,),
                                        corrupt_args=(corrupt,))
    small = top_edges(patched, int(0.2 * edges.num_edges))
    small_rand = [evaluate_with_edges(edges, [e for e in every if e not in set(s)], acc, ids)
                  for s in random_edge_sets(edges, len(small), 10, seed=0)]
    result = {
        "full_accuracy": full_acc,
        "chance": 1 / VOCAB,
        "prev_token_head": [prev, round(prev_score, 3)],
        "induction_head": [ind, round(ind_score, 3)],
        "edges_total": edges.num_edges,
        "circuit_edges": len(found),
        "circuit_fraction": round(len(found) / edges.num_edges, 4),
        "contains_prev_and_induction": (f"a0.h{prev}", f"a1.h{ind}.k") in set(found)
        and any(w == f"a1.h{ind}" for w, _ in found),
        "precision_recall_vs_textbook": precision_recall(found, truth),
        "circuit_alone_accuracy": alone,
        "circuit_ablated_accuracy": ablated,
        "random_alone_accuracy_median": statistics.median(rand_alone),
        "random_ablated_accuracy": [round(x, 3) for x in rand_ablated],
        "random_ablated_accuracy_median": statistics.median(rand_ablated),
        "eap_topk_precision_recall_vs_textbook": precision_recall(eap, truth),
        "eap_topk_alone_accuracy": evaluate_with_edges(edges, eap, acc, ids),
        "eap_20pct": {
            "edges": len(small),
            "contains_prev_to_induction_key": (f"a0.h{prev}", f"a1.h{ind}.k") in set(small),
            "precision_recall_vs_textbook": precision_recall(small, truth),
            "alone_accuracy": evaluate_with_edges(edges, small, acc, ids),
            "ablated_accuracy": evaluate_with_edges(
                edges, [e for e in every if e not in set(small)], acc, ids),
            "random_ablated_accuracy_median": statistics.median(small_rand),
            "random_ablated_accuracy_min": min(small_rand),
        },
        "mask_training_seconds": round(seconds, 1),
        "circuit": found,
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
