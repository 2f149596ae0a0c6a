"""A planted circuit in a 3-layer GPT-2: head masks recover it exactly (edge level: benchmarks/ground_truth_planted.py)."""

from __future__ import annotations

import pytest

pytest.importorskip("transformers")

from modeopt_masks.circuits.planted import recover_planted  # noqa: E402


def test_head_masks_recover_planted_heads_and_beat_random_circuits():
    r = recover_planted("head", n_layer=3, planted=3, steps=150, n_random=10)
    assert (r["precision"], r["recall"]) == (1.0, 1.0)
    assert r["faithfulness"] == 1.0  # the circuit alone computes the teacher
    assert max(r["random"]) < 0.5 and r["full_model"] < 0.5  # and nothing else does


def test_bad_level_is_refused():
    with pytest.raises(ValueError, match="level must be"):
        recover_planted("weights")
