"""Induction ground truth on a cached 2-layer attention-only model (benchmarks/ground_truth_induction.py).

The fixture was trained by that script on sequences repeated once at a random offset, so
only induction (previous-token head -> induction head's key) copies the second half.
"""

from __future__ import annotations

import pathlib
import statistics

import torch

from modeopt_masks.circuits import EdgeMaskedModel, TinyTransformer, TinyTransformerConfig
from modeopt_masks.circuits.eap import edge_attribution_patching, top_edges
from modeopt_masks.circuits.ground_truth import (
    copying_accuracy,
    evaluate_with_edges,
    induction_batch,
    induction_head,
    induction_loss,
    previous_token_head,
    random_edge_sets,
)

FIXTURE = pathlib.Path(__file__).parent / "fixtures" / "induction_tiny.pt"
VOCAB, HALF = 24, 8


def _model():
    net = TinyTransformer(TinyTransformerConfig(vocab_size=VOCAB, d_model=32, n_layers=2, n_heads=4,
                                                d_head=8, d_mlp=0, max_len=2 * HALF, norm=False))
    net.load_state_dict(torch.load(FIXTURE, weights_only=True))
    return net.eval()


def test_induction_circuit_from_eap_is_small_and_necessary():
    net = _model()
    gen = torch.Generator().manual_seed(1)
    ids, copy = induction_batch(128, HALF, VOCAB, gen)
    a = torch.randint(0, VOCAB, (64, HALF), generator=gen)
    prev, prev_score = previous_token_head(net, torch.cat([a, a], 1))
    ind, ind_score = induction_head(net, torch.cat([a, a], 1))
    assert prev_score > 0.3 and ind_score > 0.6  # random-init heads score ~1/t
    with torch.no_grad():
        assert copying_accuracy(net(ids), ids, copy) > 0.9

    edges = EdgeMaskedModel(net)
    corrupt = torch.randint(0, VOCAB, ids.shape, generator=gen)  # same tokens statistics, no repeat
    scores = edge_attribution_patching(edges, lambda o: induction_loss(o, ids, copy), (ids,),
                                       corrupt_args=(corrupt,))
    k = int(0.2 * edges.num_edges)  # < 20% of the edges
    circuit = top_edges(scores, k)
    assert (f"a0.h{prev}", f"a1.h{ind}.k") in circuit  # the K-composition of the two heads

    def acc(out):
        return copying_accuracy(out, ids, copy)

    others = edges.all_edges()
    ablated = evaluate_with_edges(edges, [e for e in others if e not in set(circuit)], acc, ids)
    random_ablated = [evaluate_with_edges(edges, [e for e in others if e not in set(s)], acc, ids)
                      for s in random_edge_sets(edges, k, 10, seed=0)]
    assert ablated < 3 / VOCAB  # near chance (1/24)
    assert statistics.median(random_ablated) > 0.5
