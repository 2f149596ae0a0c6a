"""The hidden-size axis: residual-stream channels pruned alone, per family.

Hidden 256 with 2 heads: one step of the search (2 channels, the head count) is
under 1% of the parameters, so every target can be met within 1%.
"""

from __future__ import annotations

import pytest
import torch
from axes_models import (
    DECODERS,
    STREAM_FAMILIES,
    assert_generates_same_with_and_without_cache,
    batch,
    build,
    export_at,
    prune_export,
    scored,
)

import modeopt_masks as mm
from modeopt_masks.structured import gradnas_hparams


def _hidden_model(family: str):
    return build(family, hidden=256, layers=1, heads=2, kv=1, inter=32)


@pytest.mark.parametrize("family", STREAM_FAMILIES)
def test_hidden_alone_exports_what_the_mask_computes(family):
    torch.set_num_threads(1)
    model = _hidden_model(family)
    before = sum(p.numel() for p in model.parameters())
    model = scored(family, model, {"axes": ["hidden"]}, n_batches=2)
    for target in (0.5, 0.7, 0.9):
        res, dense, masked, exported, kept, pruned, ratio = export_at(family, model, target,
                                                                      before)
        assert target - 0.01 <= ratio <= target + 1e-9
        assert res.constraints["params"]["achieved"] == sum(p.numel() for p in pruned.parameters())
        assert kept is not None and len(kept) < 256 and pruned.config.hidden_size == len(kept)
        assert (masked - exported).abs().max() <= 1e-5
        assert (masked - dense).abs().max() > 1e-3  # the mask did prune something
        if family in DECODERS:
            assert_generates_same_with_and_without_cache(pruned)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_tied_embeddings_stay_tied(family):
    model = build(family)
    assert model.lm_head.weight is model.get_input_embeddings().weight
    *_, kept, model = prune_export(family, model, {"axes": ["hidden"]}, {"params": "70%"})
    emb = model.get_input_embeddings()
    assert model.lm_head.weight is emb.weight
    assert emb.weight.shape == (40, len(kept)) and emb.embedding_dim == len(kept)
    # one tensor: training the exported model keeps them tied
    with torch.no_grad():
        emb.weight[0, 0] += 1.0
    assert model.lm_head.weight[0, 0] == emb.weight[0, 0]


def test_untied_head_is_sliced_separately():
    model = build("gpt_neox")
    *_, kept, model = prune_export("gpt_neox", model, {"axes": ["hidden"]}, {"params": "70%"})
    head = model.get_output_embeddings()
    assert head.weight.shape == (40, len(kept)) and head.in_features == len(kept)
    assert head.weight is not model.get_input_embeddings().weight


def test_activation_score_is_mean_abs_norm_output():
    model = build("llama")
    data = [batch("llama", i) for i in range(3)]
    outs = []
    norms = [m for n, m in model.named_modules() if type(m).__name__ == "LlamaRMSNorm"
             and "self_attn" not in n]
    hooks = [m.register_forward_hook(lambda _m, _i, o: outs.append(o.detach().abs()))
             for m in norms]
    with torch.no_grad():
        for b in data:
            model(**b)
    for h in hooks:
        h.remove()
    flat = torch.cat([o.reshape(-1, o.shape[-1]) for o in outs]).double()
    expected = flat.sum(0) / flat.shape[0]
    model = mm.convert(model, ("gradnas", {"axes": ["hidden"], "hf.hidden": {"score": "activation"}}))
    mm.collect_scores(model, data, loss_func=lambda out, b: out.logits.pow(2).mean(),
                      progress=False)
    (hp,) = gradnas_hparams(model).values()
    assert torch.allclose(hp.importance, expected, rtol=1e-5)


def test_hidden_masks_the_stream_and_norms_over_kept_channels():
    """A masked RMSNorm divides by the kept channels only (what the sliced one computes)."""
    model = mm.convert(build("llama"), ("gradnas", {"axes": ["hidden"]}))
    (hp,) = gradnas_hparams(model).values()
    hp.keep(list(range(0, 64, 2)))
    norm = model.model.norm
    x = torch.randn(3, 64)
    x[:, 1::2] = 0.0
    y = norm(x)
    ref = x[:, ::2] * torch.rsqrt(x[:, ::2].pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)
    assert torch.allclose(y[:, ::2], norm.weight[::2] * ref, atol=1e-6)
    assert y[:, 1::2].abs().max() == 0


def test_uniform_hidden_export_reloads_with_stock_transformers(tmp_path):
    torch.set_num_threads(1)
    transformers = pytest.importorskip("transformers")
    model = build("llama", hidden=64, heads=4, kv=2)
    *_, exported_out, kept, model = prune_export(
        "llama", model, {"axes": ["hidden", "mlp"], "uniform": True}, {"params": "70%"})
    assert len(kept) % 4 == 0 and model.config.head_dim == 16
    model.save_pretrained(tmp_path)
    again = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert again.lm_head.weight is again.get_input_embeddings().weight
    probe = batch("llama", 99)
    with torch.no_grad():
        assert (again(**probe).logits - exported_out).abs().max() <= 1e-5


def test_score_type_checked_per_axis():
    with pytest.raises(ValueError, match="score 'influence' is not one of"):
        mm.convert(build("llama"), ("gradnas", {"axes": ["hidden"],
                                                "hf.hidden": {"score": "influence"}}))


def test_unknown_axis_and_missing_stream_are_errors():
    with pytest.raises(ValueError, match="valid axes"):
        mm.convert(build("llama"), ("gradnas", {"axes": ["width"]}))
    net = torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))
    with pytest.raises(ValueError, match="hidden axis needs a residual-stream layout"):
        mm.convert(net, ("gradnas", {"axes": ["channels", "hidden"]}))
    assert type(net[2]) is torch.nn.Linear  # the failed call changed nothing


def test_hidden_refuses_what_it_cannot_prune_exactly():
    transformers = pytest.importorskip("transformers")
    gemma = transformers.GemmaForCausalLM(transformers.GemmaConfig(
        vocab_size=40, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, head_dim=8, intermediate_size=16))
    with pytest.raises(ValueError, match="sqrt"):
        mm.convert(gemma, ("gradnas", {"axes": ["hidden"]}))
    llama = build("llama")
    llama.model.layers[0].extra_norm = type(llama.model.norm)(64)  # a norm the layout omits
    with pytest.raises(ValueError, match="extra_norm.*does not list"):
        mm.convert(llama, ("gradnas", {"axes": ["hidden"]}))
    assert not any(type(m).__name__.startswith("StreamMasked") for m in llama.modules())
