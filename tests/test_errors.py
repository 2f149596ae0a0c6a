"""Short errors and the default exclusions' survival, on Hugging Face models (issue 14)."""

from __future__ import annotations

import pytest
import torch

import modeopt_masks as mm

transformers = pytest.importorskip("transformers")


def _bert() -> torch.nn.Module:
    return transformers.BertForSequenceClassification(transformers.BertConfig(
        vocab_size=32, hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=16)).eval()


def test_a_glob_that_matches_nothing_is_one_short_line_naming_the_closest_modules():
    model = _bert()
    n_modules = sum(1 for _ in model.named_modules())
    with pytest.raises(ValueError) as info:
        mm.convert(model, ("magnitude_pruning", {"nn.Linear": {"*attention.self.quary": {}}}))
    message = str(info.value)
    assert "\n" not in message and len(message) < 600  # was one line per module
    assert f"of {n_modules})" in message
    closest = message.split("closest nn.Linear modules: ")[1]
    assert closest.startswith("'bert.encoder.layer.") and ".attention.self.query'" in closest
    assert mm.mode_history(model) == []


def test_a_star_rule_keeps_a_tied_lm_head_and_its_embedding_unmasked():
    torch.manual_seed(0)
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=40, n_positions=16, n_embd=16, n_layer=2, n_head=2)).eval()
    assert gpt2.lm_head.weight is gpt2.transformer.wte.weight
    embedding = gpt2.transformer.wte.weight.detach().clone()
    # the obvious way to set a percentage (issue 14): nn.Linear is only lm_head in GPT-2
    model = mm.convert(gpt2, ("magnitude_pruning", {"nn.Linear": {"*": {"prune_percentage": 0.5}},
                                                    "hf.Conv1D": {"*": {"prune_percentage": 0.5}}}))
    masked = mm.masked_modules(model)
    assert "lm_head" not in masked and "transformer.h.0.attn.c_attn" in masked
    model = mm.export(model)
    assert torch.equal(model.transformer.wte.weight, embedding)


def test_naming_the_head_converts_it():
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=40, n_positions=16, n_embd=16, n_layer=1, n_head=2, tie_word_embeddings=False))
    model = mm.convert(gpt2, ("magnitude_pruning", {
        "nn.Linear": {"*": {"prune_percentage": 0.5}, "lm_head": {}}, "hf.Conv1D": None}))
    assert list(mm.masked_modules(model)) == ["lm_head"]
    stats = mm.l0_stats(model.eval())
    assert stats["layer2l0"]["lm_head"] == 0.5 * stats["layer2maxl0"]["lm_head"]
