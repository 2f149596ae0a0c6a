"""Grouped-query attention with ``gqa="even"``: query heads pruned evenly within each KV group."""

from __future__ import annotations

import pytest
import torch

import modeopt_masks as mm
from modeopt_masks.pruning import prune
from modeopt_masks.structured import collect_scores, gradnas_hparams

transformers = pytest.importorskip("transformers")

HEADS, KV, HEAD_DIM = 8, 2, 4


def make_gqa(family: str):
    torch.manual_seed(0)
    cls = {"llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
           "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
           "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM)}[family]
    cfg = cls[0](vocab_size=40, max_position_embeddings=32, hidden_size=HEADS * HEAD_DIM,
                 num_hidden_layers=2, num_attention_heads=HEADS, num_key_value_heads=KV,
                 intermediate_size=32, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    return cls[1](cfg).eval()


def batches(n: int = 3):
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(n):
        ids = torch.randint(1, 40, (2, 8), generator=g)
        out.append({"input_ids": ids, "labels": ids})
    return out


EVEN = {"hf.attention": {"gqa": "even"}, "hf.mlp": None}


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2"])
def test_even_gqa_export_runs_generates_and_matches_masked(family):
    model, result = prune(make_gqa(family), ("gradnas", EVEN), constraints={"params": "85%"},
                          config={"data_loader": batches(), "progress": False})
    hps = gradnas_hparams(model)
    assert all(hp.n_units == HEADS and hp.choices == [2, 4, 6, 8] for hp in hps.values())
    assert any(k < HEADS for k in result.selection.values())
    for name, hp in hps.items():  # every KV group keeps the same number of query heads
        per_group = [sum(1 for u in hp.kept if u // (HEADS // KV) == g) for g in range(KV)]
        assert per_group == [result.selection[name] // KV] * KV
    x = batches(1)[0]["input_ids"]
    with torch.no_grad():
        masked = model(input_ids=x).logits
    model = mm.export(model)
    for name, kept in result.selection.items():
        attn = model.get_submodule(name)
        assert attn.q_proj.out_features == kept * HEAD_DIM == attn.o_proj.in_features
        assert attn.k_proj.out_features == KV * HEAD_DIM == attn.v_proj.out_features
        assert attn.num_key_value_groups == kept // KV
    with torch.no_grad():
        exported = model(input_ids=x).logits
    torch.testing.assert_close(exported, masked, atol=1e-5, rtol=1e-5)
    assert mm.searchers.count_params(model) == result.constraints["params"]["achieved"]
    out = model.generate(x[:1, :4], max_new_tokens=4, do_sample=False)
    assert out.shape == (1, 8)


def test_even_gqa_scores_are_per_head_in_original_order():
    model = make_gqa("llama")
    ref_model = make_gqa("llama")
    data = batches()
    # reference: squared gradient w.r.t. a hand-made per-head mask on o_proj's input
    masks, ref = {}, {}
    for i, layer in enumerate(ref_model.model.layers):
        mask = torch.ones(HEADS, requires_grad=True)
        masks[i] = mask

        def hook(_mod, args, mask=mask):
            (h,) = args
            return (h.unflatten(-1, (HEADS, HEAD_DIM)) * mask[:, None]).flatten(-2),

        layer.self_attn.o_proj.register_forward_pre_hook(hook)
    for batch in data:
        grads = torch.autograd.grad(ref_model(**batch).loss, list(masks.values()))
        for i, g in enumerate(grads):
            ref[i] = ref.get(i, 0) + g.double() ** 2
    model = mm.convert(model, ("gradnas", EVEN))
    scores = collect_scores(model, data, progress=False)
    for i in range(2):
        got = scores[f"model.layers.{i}.self_attn"]
        assert got.shape == (HEADS,)
        torch.testing.assert_close(got, ref[i], rtol=1e-6, atol=1e-12)


def test_even_gqa_keeps_the_best_heads_of_each_group():
    model = mm.convert(make_gqa("llama"), ("gradnas", EVEN))
    hp = gradnas_hparams(model)["model.layers.0.self_attn"]
    hp.importance = torch.tensor([9.0, 1, 2, 3, 8, 7, 6, 5])  # groups: heads 0-3 and 4-7
    assert hp.top(4) == [0, 3, 4, 5]  # not the global top 4 (0, 4, 5, 6)
    assert hp.top(6) == [0, 2, 3, 4, 5, 6]
    with pytest.raises(ValueError, match="same number of query heads"):
        hp.keep([0, 4, 5, 6])
    assert hp.kept == list(range(HEADS))
    hp.keep([0, 3, 4, 5])
    x = batches(1)[0]["input_ids"]
    with torch.no_grad():
        masked = model(input_ids=x).logits
    layer = model.model.layers[0].self_attn
    q = layer.q_proj.weight.detach().clone()
    model = mm.export(model)
    rows = [h * HEAD_DIM + j for h in (0, 3, 4, 5) for j in range(HEAD_DIM)]
    assert torch.equal(model.model.layers[0].self_attn.q_proj.weight, q[rows])
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=x).logits, masked, atol=1e-5, rtol=1e-5)


def test_even_gqa_search_and_save_restore(tmp_path):
    model, result = prune(make_gqa("llama"), ("gradnas", EVEN), constraints={"params": "80%"},
                          config={"data_loader": batches(), "progress": False})
    for name, hp in gradnas_hparams(model).items():
        assert hp.kept == hp.top(result.selection[name])
        # sensitivity of a choice: the global share of score pruned when each group keeps its best
        total = sum(float(h.importance.sum()) for h in gradnas_hparams(model).values()
                    if h.structure.kind == "heads")
        expected = [(float(hp.importance.sum()) - float(hp.importance[hp.top(c)].sum())) / total
                    for c in hp.choices]
        assert result.sensitivities[name] == pytest.approx(expected, abs=1e-12)
    mm.save(model, tmp_path)
    fresh = mm.restore(make_gqa("llama"), tmp_path)
    hps = gradnas_hparams(fresh)
    assert {n: hp.kept for n, hp in hps.items()} == result.kept
    assert all(hp.structure.groups == KV for hp in hps.values())


def test_groups_mode_is_the_default_and_mha_even_is_per_head():
    hps = gradnas_hparams(mm.convert(make_gqa("llama"), ("gradnas", {"hf.mlp": None})))
    assert all(hp.n_units == KV and hp.structure.heads_per_unit == HEADS // KV
               for hp in hps.values())
    with pytest.raises(ValueError, match="gqa"):
        mm.convert(make_gqa("llama"), ("gradnas", {"hf.attention": {"gqa": "uneven"}}))
    torch.manual_seed(0)
    mha = transformers.Qwen2Model(transformers.Qwen2Config(
        vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=4, intermediate_size=16))
    (hp,) = gradnas_hparams(mm.convert(mha, ("gradnas", EVEN))).values()
    assert (hp.n_units, hp.structure.groups, hp.choices) == (4, 1, [1, 2, 3, 4])
