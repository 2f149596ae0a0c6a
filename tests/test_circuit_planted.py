"""Planted circuits in a random GPT-2 recovered by the library's masks (full sizes: benchmarks/ground_truth_planted.py)."""

from __future__ import annotations

import pytest

pytest.importorskip("transformers")

from modeopt_masks.circuits.planted import reaching_logits, recover_planted  # noqa: E402


def test_head_masks_recover_planted_heads_and_beat_random_circuits():
    r = recover_planted("head", n_layer=3, planted=3, steps=150, n_random=10)
    assert (r["precision"], r["recall"]) == (1.0, 1.0)
    assert r["faithfulness"] == 1.0  # the circuit alone computes the teacher
    assert max(r["random"]) < 0.5 and r["full_model"] < 0.5  # and nothing else does


def test_weight_masks_recover_planted_weights_where_magnitude_cannot():
    r = recover_planted("weight", n_layer=1, density=0.15, steps=300, n_random=10)
    assert r["size"] == round(0.15 * r["total"]) and abs(r["found"] - r["size"]) <= 0.05 * r["size"]
    # masks that learned nothing would score about the density (0.15), like magnitude
    assert r["precision"] > 0.8 and r["recall"] > 0.8
    assert r["magnitude"]["precision"] < 0.3 and r["magnitude"]["recall"] < 0.3
    assert r["faithfulness"] > max(r["random"]) + 0.3
    assert r["faithfulness"] > r["magnitude"]["faithfulness"] + 0.3
    assert r["faithfulness"] > r["full_model"] + 0.3


def test_edge_masks_recover_the_planted_edges_that_matter():
    r = recover_planted("edge", n_layer=2, planted=2, steps=300, n_random=10)
    # 9 edges planted through 2 heads; the q/k reads change nothing at random init
    assert r["planted_size"] == 9 and r["size"] == 5
    assert (r["precision"], r["recall"]) == (1.0, 1.0)
    assert r["faithfulness"] > 0.9 and max(r["random"]) < 0.3 and r["full_model"] < 0.3


def test_dangling_edges_are_dropped():
    circuit = [("embed", "a0.h0.v"), ("a0.h0", "a1.h0.q"), ("a1.h0", "logits"),
               ("embed", "a1.h3.v")]  # a1.h3 writes nowhere in the circuit
    assert reaching_logits(circuit) == circuit[:3]


@pytest.mark.parametrize("level", ["weights", "heads", "neuron"])
def test_bad_level_is_refused_with_the_valid_levels(level):
    with pytest.raises(ValueError, match=f"level must be one of 'weight', 'head', 'edge', got '{level}'"):
        recover_planted(level)


def test_bad_weight_method_and_density_are_refused():
    with pytest.raises(ValueError, match="method must be 'continuous_sparsification' or 'hard_concrete'"):
        recover_planted("weight", method="magnitude_pruning")
    with pytest.raises(ValueError, match=r"density is a fraction in \(0, 1\)"):
        recover_planted("weight", density=1.5)
