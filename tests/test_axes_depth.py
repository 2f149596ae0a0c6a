"""The depth axis: whole blocks pruned alone, per family.

120 tiny blocks: one block is under 1% of the parameters, so every target can be
met within 1%.
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

LAYERS = 120


def _deep(family: str, layers: int = LAYERS):
    return build(family, hidden=8, layers=layers, heads=2, kv=1, inter=8)


def _blocks(model):
    return next(m for n, m in model.named_modules()
                if isinstance(m, torch.nn.ModuleList) and n.endswith(("layers", "h", "layer")))


@pytest.mark.parametrize("family", STREAM_FAMILIES)
def test_depth_alone_exports_what_the_gates_compute(family):
    torch.set_num_threads(1)
    model = _deep(family)
    before = sum(p.numel() for p in model.parameters())
    model = scored(family, model, {"axes": ["depth"]}, n_batches=2)
    for target in (0.5, 0.7, 0.9):
        res, dense, masked, exported, _, pruned, ratio = export_at(family, model, target, before)
        assert target - 0.01 <= ratio <= target + 1e-9
        (kept,) = res.kept.values()
        assert len(_blocks(pruned)) == len(kept) == pruned.config.num_hidden_layers < LAYERS
        assert (masked - exported).abs().max() <= 1e-5
        assert (masked - dense).abs().max() > 1e-6
        for i, block in enumerate(_blocks(pruned)):  # renumbered: caches index the right layer
            idx = {m.layer_idx for m in block.modules()
                   if isinstance(getattr(m, "layer_idx", None), int)}
            assert idx <= {i}
        if family in DECODERS:
            assert_generates_same_with_and_without_cache(pruned)


def test_kv_cache_follows_the_kept_blocks():
    """Prefill + one cached step of the exported model equals the full uncached forward, and
    the cache has one layer per kept block."""
    model = _deep("llama", layers=6)
    *_, model = prune_export("llama", model, {"axes": ["depth"]}, {"params": "60%"})
    ids = batch("llama", 3, size=1)["input_ids"]
    with torch.no_grad():
        full = model(ids).logits[:, -1]
        pre = model(ids[:, :-1], use_cache=True)
        step = model(ids[:, -1:], cache=pre.past_key_values, use_cache=True).logits[:, -1]
    assert len(pre.past_key_values.layers) == model.config.num_hidden_layers < 6
    assert torch.allclose(step, full, atol=1e-5)


def test_layer_types_follow_the_kept_blocks():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.Qwen2Config(
        vocab_size=40, hidden_size=16, num_hidden_layers=4, num_attention_heads=2,
        num_key_value_heads=1, intermediate_size=8, use_sliding_window=True, sliding_window=4,
        max_window_layers=2)
    model = transformers.Qwen2ForCausalLM(cfg).eval()
    types = list(model.config.layer_types)
    model, res = mm.prune(model, ("gradnas", {"axes": ["depth"]}), constraints={"params": "70%"},
                          config={"data_loader": [batch("llama", i) for i in range(2)],
                                  "loss_func": lambda out, b: out.logits.pow(2).mean(),
                                  "progress": False})
    (kept,) = res.kept.values()
    model = mm.export(model)
    assert model.config.layer_types == [types[i] for i in kept]
    assert_generates_same_with_and_without_cache(model)


def test_influence_score_is_one_minus_cosine():
    model = _deep("llama", layers=3)
    data = [batch("llama", i) for i in range(2)]
    sums = torch.zeros(3, dtype=torch.float64)
    counts = torch.zeros(3, dtype=torch.float64)

    def hook(i):
        def record(_m, args, out):
            cos = torch.nn.functional.cosine_similarity(args[0].double(), out.double(), dim=-1)
            sums[i] += (1 - cos).sum()
            counts[i] += cos.numel()
        return record

    hooks = [b.register_forward_hook(hook(i)) for i, b in enumerate(model.model.layers)]
    with torch.no_grad():
        for b in data:
            model(**b)
    for h in hooks:
        h.remove()
    model = mm.convert(model, ("gradnas", {"axes": ["depth"], "hf.depth": {"score": "influence"}}))
    mm.collect_scores(model, data, loss_func=lambda out, b: out.logits.pow(2).mean(),
                      progress=False)
    (hp,) = gradnas_hparams(model).values()
    assert torch.allclose(hp.importance, sums / counts, rtol=1e-6)


def test_gradient_score_is_gate_gradient_squared():
    model = _deep("llama", layers=3)
    data = [batch("llama", i) for i in range(2)]
    lossf = lambda out, b: out.logits.pow(2).mean()  # noqa: E731
    expected = torch.zeros(3, dtype=torch.float64)
    for b in data:  # d loss / d g_i at g = 1, with block i's output x + g (f(x) - x)
        gates = torch.ones(3, requires_grad=True)
        hooks = [blk.register_forward_hook(
            lambda _m, args, out, i=i, gates=gates: args[0] + gates[i] * (out - args[0]))
            for i, blk in enumerate(model.model.layers)]
        (g,) = torch.autograd.grad(lossf(model(**b), b), [gates])
        expected += g.double() ** 2
        for h in hooks:
            h.remove()
    model = mm.convert(model, ("gradnas", {"axes": ["depth"]}))
    mm.collect_scores(model, data, loss_func=lossf, progress=False)
    (hp,) = gradnas_hparams(model).values()
    assert torch.allclose(hp.importance, expected, rtol=1e-4)


def test_min_ratio_bounds_depth():
    model = _deep("llama", layers=8)
    with pytest.raises(ValueError, match="cannot be met"):
        mm.prune(model, ("gradnas", {"axes": ["depth"], "hf.depth": {"min_ratio": 0.75}}),
                 constraints={"params": "50%"},
                 config={"data_loader": [batch("llama", 0)], "progress": False,
                         "loss_func": lambda out, b: out.logits.pow(2).mean()})
    assert not any(type(m).__name__.startswith("StreamMasked") for m in model.modules())
