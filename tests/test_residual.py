"""ResidualUpdateModel: cached updates/streams agree with the model's own hidden states."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from modeopt_masks.probing import (  # noqa: E402
    ResidualUpdateModel,
    ResidualUpdateModelConfig,
    layout_for,
)

T = transformers
COMMON = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)


def _bert_like(cls_cfg, cls_model, **extra):
    return lambda drop=0.0: cls_model(
        cls_cfg(vocab_size=50, hidden_dropout_prob=drop, **COMMON, **extra)
    )


FAMILIES = {
    "bert": _bert_like(T.BertConfig, T.BertModel),
    "roberta": _bert_like(T.RobertaConfig, T.RobertaModel),
    "electra": _bert_like(T.ElectraConfig, T.ElectraModel, embedding_size=32),
    "ernie": _bert_like(T.ErnieConfig, T.ErnieModel),
    "convbert": _bert_like(T.ConvBertConfig, T.ConvBertModel, embedding_size=32),
    "mpnet": _bert_like(T.MPNetConfig, T.MPNetModel),
    "gpt2": lambda drop=0.0: T.GPT2Model(T.GPT2Config(
        vocab_size=50, n_embd=32, n_layer=2, n_head=2, n_positions=16,
        resid_pdrop=drop, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)),
    "gpt_neox": lambda drop=0.0: T.GPTNeoXModel(T.GPTNeoXConfig(
        vocab_size=50, hidden_dropout=drop, **COMMON)),
    "gpt_neox_sequential": lambda drop=0.0: T.GPTNeoXModel(T.GPTNeoXConfig(
        vocab_size=50, hidden_dropout=drop, use_parallel_residual=False, **COMMON)),
    "llama": lambda drop=0.0: T.LlamaModel(T.LlamaConfig(
        vocab_size=50, num_key_value_heads=1, **COMMON)),
    "vit": lambda drop=0.0: T.ViTModel(T.ViTConfig(
        image_size=8, patch_size=4, num_channels=3, hidden_dropout_prob=drop, **COMMON)),
}


def _inputs(name):
    g = torch.Generator().manual_seed(1)
    if name == "vit":
        return {"pixel_values": torch.randn(2, 3, 8, 8, generator=g)}
    return {"input_ids": torch.randint(0, 50, (2, 5), generator=g)}


def _final_norm(model):
    for attr in ("ln_f", "final_layer_norm", "norm", "layernorm"):
        if hasattr(model, attr):
            return getattr(model, attr)
    return None


def _post_ln_norms(rum, i):
    layer = rum._layers()[i]
    attn_ln = layer.attention.LayerNorm if rum.layout.family == "mpnet" else (
        layer.attention.output.LayerNorm)
    return attn_ln, layer.output.LayerNorm


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_updates_and_streams_match_hidden_states(name):
    torch.manual_seed(0)
    model = FAMILIES[name]().eval()
    rum = ResidualUpdateModel(ResidualUpdateModelConfig(target_layers=[0, 1], stream=True), model)
    with torch.no_grad():
        out = rum(**_inputs(name), output_hidden_states=True)
    hs, cache = out.hidden_states, rum.vector_cache
    assert sorted(cache) == sorted(rum.config.vector_names())
    for i in range(2):
        upd_a, upd_m = cache[f"attn_update_{i}"], cache[f"mlp_update_{i}"]
        st_a, st_m = cache[f"attn_stream_{i}"], cache[f"mlp_stream_{i}"]
        assert upd_a.shape == hs[i].shape
        if rum.layout.post_ln:
            # post-LN: stream = LayerNorm(previous stream + update)
            ln_a, ln_m = _post_ln_norms(rum, i)
            torch.testing.assert_close(ln_a(hs[i] + upd_a), st_a, rtol=0, atol=1e-6)
            torch.testing.assert_close(ln_m(st_a + upd_m), st_m, rtol=0, atol=1e-6)
            torch.testing.assert_close(st_m, hs[i + 1], rtol=0, atol=0)
        else:
            # pre-LN: x + attn_update = attn_stream; x + attn + mlp = the layer's output
            torch.testing.assert_close(hs[i] + upd_a, st_a, rtol=0, atol=0)
            torch.testing.assert_close(hs[i] + upd_a + upd_m, st_m, rtol=1e-6, atol=1e-6)
            last = i == 1
            norm = _final_norm(model)
            if last and name != "vit":  # HF applies the final norm to the last hidden state
                torch.testing.assert_close(norm(st_m), hs[i + 1], rtol=1e-6, atol=1e-6)
                assert not torch.allclose(st_m, hs[i + 1])
            else:
                torch.testing.assert_close(st_m, hs[i + 1], rtol=0, atol=0)


@pytest.mark.parametrize("name", ["bert", "gpt_neox_sequential", "vit"])
def test_updates_include_residual_dropout_in_training(name):
    """In training the cached update is the tensor actually added (after dropout)."""
    torch.manual_seed(0)
    model = FAMILIES[name](drop=0.5).train()
    rum = ResidualUpdateModel(ResidualUpdateModelConfig(target_layers=[0], stream=True), model)
    out = rum(**_inputs(name), output_hidden_states=True)
    hs, cache = out.hidden_states, rum.vector_cache
    upd_a, upd_m = cache["attn_update_0"], cache["mlp_update_0"]
    assert (upd_a == 0).float().mean() > 0.3  # dropout zeroed about half of it
    if name == "bert":
        ln_a, ln_m = _post_ln_norms(rum, 0)
        torch.testing.assert_close(ln_a(hs[0] + upd_a), cache["attn_stream_0"])
        torch.testing.assert_close(ln_m(cache["attn_stream_0"] + upd_m), hs[1])
    else:
        torch.testing.assert_close(hs[0] + upd_a + upd_m, hs[1])


def test_only_requested_vectors_and_grad_flows():
    torch.manual_seed(0)
    model = FAMILIES["gpt2"]()
    rum = ResidualUpdateModel(
        ResidualUpdateModelConfig(target_layers=[1], attn=False, stream=True, updates=False),
        model,
    )
    rum(**_inputs("gpt2"))
    assert list(rum.vector_cache) == ["mlp_stream_1"]
    rum.vector_cache["mlp_stream_1"].sum().backward()
    assert model.h[0].attn.c_attn.weight.grad is not None


def test_removed_or_disabled_hooks_cache_nothing_and_leave_outputs_unchanged():
    torch.manual_seed(0)
    model = FAMILIES["llama"]().eval()
    inputs = _inputs("llama")
    ref = model(**inputs).last_hidden_state
    rum = ResidualUpdateModel(ResidualUpdateModelConfig(target_layers=[0, 1], stream=True), model)
    assert torch.equal(rum(**inputs).last_hidden_state, ref)
    assert len(rum.vector_cache) == 8
    with rum.disabled():
        rum(**inputs)
        assert rum.vector_cache == {}
        model(**inputs)
        assert rum.vector_cache == {}
    assert rum.enabled
    rum.remove_hooks()
    assert not rum.enabled
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    rum(**inputs)
    model(**inputs)
    assert rum.vector_cache == {}
    rum.add_hooks()
    model(**inputs)  # hooks fire when the model is called directly too
    assert len(rum.vector_cache) == 8


def test_auto_detect_and_head_models():
    torch.manual_seed(0)
    clf = T.RobertaForSequenceClassification(T.RobertaConfig(vocab_size=50, num_labels=2, **COMMON))
    rum = ResidualUpdateModel({"target_layers": [1]}, clf.eval())
    assert rum.layout.family == "bert" and rum.layers_name == "roberta.encoder.layer"
    out = rum(**_inputs("bert"), output_hidden_states=True)
    assert out.logits.shape == (2, 2)
    assert set(rum.vector_cache) == {"attn_update_1", "mlp_update_1"}


def test_errors_name_valid_choices():
    model = FAMILIES["gpt2"]()
    with pytest.raises(ValueError, match="supported families.*bert.*gpt2"):
        ResidualUpdateModel(ResidualUpdateModelConfig(model_type="t5", target_layers=[0]), model)
    with pytest.raises(ValueError, match="out of range.*2 layers"):
        ResidualUpdateModel(ResidualUpdateModelConfig(target_layers=[5]), model)
    with pytest.raises(ValueError, match="no layer list"):
        ResidualUpdateModel(ResidualUpdateModelConfig(model_type="bert", target_layers=[0]), model)
    with pytest.raises(ValueError, match="at least one"):
        ResidualUpdateModelConfig(target_layers=[0], attn=False, mlp=False)
    assert not any(m._forward_hooks for m in model.modules())  # failed wraps leave no hooks
    assert layout_for("qwen2").family == "llama"


@pytest.mark.parametrize(("alias", "name"), [("bert", "bert"), ("gpt", "gpt2"),
                                             ("gptneox", "gpt_neox"), ("vit", "vit")])
def test_neurosurgeon_model_type_aliases(alias, name):
    """NeuroSurgeon's documented ``model_type`` values pick the same layout as auto-detection."""
    model = FAMILIES[name]().eval()
    named = ResidualUpdateModel({"model_type": alias, "target_layers": [1]}, model)
    out_named = (named(**_inputs(name)), dict(named.vector_cache))
    named.remove_hooks()
    auto = ResidualUpdateModel({"target_layers": [1]}, model)
    auto(**_inputs(name))
    assert named.layout == auto.layout
    assert out_named[1].keys() == auto.vector_cache.keys() == {"attn_update_1", "mlp_update_1"}
    assert all(torch.equal(out_named[1][k], auto.vector_cache[k]) for k in auto.vector_cache)


@pytest.mark.parametrize("name", ["mpnet", "convbert", "ernie", "roberta", "electra"])
def test_neurosurgeon_architectures_by_their_model_type(name):
    model = FAMILIES[name]().eval()
    rum = ResidualUpdateModel({"model_type": model.config.model_type, "target_layers": [0, 1],
                               "stream": True}, model)
    out = rum(**_inputs(name), output_hidden_states=True)
    assert torch.equal(rum.vector_cache["mlp_stream_0"], out.hidden_states[1])
    assert torch.equal(rum.vector_cache["mlp_stream_1"], out.last_hidden_state)
