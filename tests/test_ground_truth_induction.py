"""Induction ground truth on a cached 2-layer attention-only model (benchmarks/ground_truth_induction.py).

The fixture was trained by that script (``train_induction_model``, seed 0) on sequences
repeated once at a random offset, so only induction (previous-token head -> induction
head's key) copies the second half; the penalty on head outputs left one head per layer
doing the work and the other seven silent, so the textbook circuit is the true one.
"""

from __future__ import annotations

import pathlib
import statistics

import pytest
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

FIXTURE = pathlib.Path(__file__).parent / "fixtures" / "induction_tiny.pt"
VOCAB, HALF = 24, 8


@pytest.fixture(scope="module")
def induction():
    """The model, a held-out batch and its two heads: (net, ids, copy, prev, ind)."""
    net = TinyTransformer.load(FIXTURE)
    gen = torch.Generator().manual_seed(1)
    ids, copy = induction_batch(256, HALF, VOCAB, gen)
    a = torch.randint(0, VOCAB, (64, HALF), generator=gen)
    prev, prev_score = previous_token_head(net, torch.cat([a, a], 1))
    ind, ind_score = induction_head(net, torch.cat([a, a], 1))
    assert prev_score > 0.3 and ind_score > 0.6  # a random-init head scores ~1/t
    return net, ids, copy, prev, ind


def test_fixture_has_one_previous_token_head_and_one_induction_head(induction):
    net, ids, copy, prev, ind = induction
    with torch.no_grad():
        assert copying_accuracy(net(ids), ids, copy) > 0.9
    assert heads_in_use(head_output_norms(net, ids)) == [[prev], [ind]]


def test_hard_concrete_recovers_the_induction_circuit(induction):
    net, ids, copy, prev, ind = induction
    edges = EdgeMaskedModel(net, init_percentage=0.9)
    gen = torch.Generator().manual_seed(2)
    train = [induction_batch(64, HALF, VOCAB, gen) for _ in range(8)]
    step = iter(range(10**9))

    def loss(e):
        x, c = train[next(step) % len(train)]
        return induction_loss(e(x), x, c)

    torch.manual_seed(0)  # the gates' noise
    fit_edges(edges, loss, 300, lr=0.1, l0_lambda=1.0)
    circuit = edges.edge_list()
    assert precision_recall(circuit, induction_circuit(prev, ind))[1] == 1.0  # holds both heads and the K-composition
    assert len(circuit) < 0.2 * edges.num_edges

    def acc(out):
        return copying_accuracy(out, ids, copy)

    full = acc(net(ids))
    assert evaluate_with_edges(edges, circuit, acc, ids) > full - 0.02  # faithful
    assert evaluate_without_edges(edges, circuit, acc, ids) < 2 / VOCAB  # near chance (1/24)
    random_ablated = [evaluate_without_edges(edges, s, acc, ids)
                      for s in random_edge_sets(edges, len(circuit), 10, seed=0)]
    assert statistics.median(random_ablated) > full - 0.05
    assert sum(x < 2 / VOCAB for x in random_ablated) <= 2


def test_eap_baseline_ranks_the_k_composition_edge_high(induction):
    net, ids, copy, prev, ind = induction
    edges = EdgeMaskedModel(net)
    scores = edge_attribution_patching(edges, lambda o: induction_loss(o, ids, copy), (ids,))
    circuit = top_edges(scores, 10)
    assert (f"a0.h{prev}", f"a1.h{ind}.k") in circuit
    assert evaluate_without_edges(edges, circuit, lambda o: copying_accuracy(o, ids, copy),
                                  ids) < 2 / VOCAB


@pytest.mark.slow
def test_head_sparsity_leaves_one_head_per_layer():
    net, acc = train_induction_model(seed=3, d_head=16)
    gen = torch.Generator().manual_seed(4)
    ids, _ = induction_batch(128, HALF, VOCAB, gen)
    assert acc > 0.9
    assert [len(heads) for heads in heads_in_use(head_output_norms(net, ids))] == [1, 1]


def test_train_induction_model_refuses_bad_sizes_and_penalties():
    with pytest.raises(ValueError, match="head_sparsity must be >= 0"):
        train_induction_model(steps=1, head_sparsity=-0.1)
    with pytest.raises(ValueError, match="not a multiple of n_heads=3: pass d_head"):
        train_induction_model(steps=1, n_heads=3, d_model=64)
    net, _ = train_induction_model(steps=1, n_heads=3, d_model=64, d_head=16)
    assert net.config.d_head == 16 and net.config.n_heads == 3
