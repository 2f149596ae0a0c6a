"""Head / KV-group mask units in every mask mode on every family the family records know.

The defining property: with head masks, keeping head ``h`` only is *the same model* as the
unconverted one whose attention output projections get the other heads' inputs zeroed.
"""

from __future__ import annotations

import copy

import pytest
import torch

import modeopt_masks as mm
from modeopt_masks.heads import head_layouts, spread_units
from modeopt_masks.targets import MaskTargets, target_rules
from modeopt_masks.training import DensityController, expected_density

tf = pytest.importorskip("transformers")

MODES = ("continuous_sparsification", "hard_concrete", "magnitude_pruning")


def _gpt2():
    return tf.GPT2LMHeadModel(tf.GPT2Config(n_embd=32, n_head=4, n_layer=2, vocab_size=50,
                                            n_positions=16, bos_token_id=0, eos_token_id=0))


def _neox():
    return tf.GPTNeoXForCausalLM(tf.GPTNeoXConfig(
        hidden_size=32, num_attention_heads=4, num_hidden_layers=2, intermediate_size=64,
        vocab_size=50, max_position_embeddings=16, bos_token_id=0, eos_token_id=0))


def _llama():  # grouped-query attention: 4 query heads, 2 KV heads
    return tf.LlamaForCausalLM(tf.LlamaConfig(
        hidden_size=32, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2,
        intermediate_size=64, vocab_size=50, attention_bias=True))


def _bert():
    return tf.BertModel(tf.BertConfig(hidden_size=32, num_attention_heads=4, num_hidden_layers=2,
                                      intermediate_size=64, vocab_size=50))


def _vit():
    return tf.ViTModel(tf.ViTConfig(image_size=8, patch_size=4, hidden_size=32,
                                    num_attention_heads=4, num_hidden_layers=2,
                                    intermediate_size=64))


FAMILIES = {"bert": _bert, "gpt2": _gpt2, "gpt_neox": _neox, "llama_gqa": _llama, "vit": _vit}


def _build(family):
    torch.manual_seed(0)
    return FAMILIES[family]().eval()


def _inputs(family):
    g = torch.Generator().manual_seed(1)
    if family == "vit":
        return {"pixel_values": torch.randn(2, 3, 8, 8, generator=g)}
    return {"input_ids": torch.randint(0, 50, (2, 7), generator=g)}


def _out(model, inputs):
    with torch.no_grad():
        out = model(**inputs)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def _convert(model, mode, unit="head", **rule):
    names = list(head_layouts(model))
    spec = {"mask_unit": unit, **rule}
    key = "hf.Conv1D" if type(model.get_submodule(names[0])).__name__ == "Conv1D" else "nn.Linear"
    return mm.convert(model, (mode, target_rules({key: names}, spec))).eval(), names


def _set_units(layer, keep):
    """Make a layer's hard circuit ``keep`` (a bool vector over its units), in any mode."""
    tech = layer.weight_mask
    with torch.no_grad():
        if hasattr(tech, "logits"):
            tech.logits.copy_(torch.where(keep, 1.0, -1.0))
        elif hasattr(tech, "log_alpha"):
            tech.log_alpha.copy_(torch.where(keep, 3.0, -3.0))
        else:
            tech.keep.copy_(keep)


def _zeroing_reference(reference, keep_columns):
    """The unconverted model with each output projection's dropped input columns zeroed."""
    for name, cols in keep_columns.items():
        reference.get_submodule(name).register_forward_pre_hook(
            lambda _m, args, cols=cols: (torch.where(cols, args[0], 0.0),))
    return reference


def _columns(layout, unit, keep):
    _, width = layout.units(unit)
    return spread_units(keep, axis=0, width=width, ndim=1)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("family", list(FAMILIES))
def test_one_head_kept_equals_zeroing_the_other_heads_inputs(family, mode):
    model = _build(family)
    reference = copy.deepcopy(model)
    inputs = _inputs(family)
    full = _out(model, inputs)
    masked, names = _convert(model, mode)
    layouts = head_layouts(reference)
    keep_columns = {}
    for i, name in enumerate(names):
        keep = torch.zeros(layouts[name].heads, dtype=torch.bool)
        keep[(i + 1) % layouts[name].heads] = True  # a different head per layer
        _set_units(masked.get_submodule(name), keep)
        keep_columns[name] = _columns(layouts[name], "head", keep)
    out = _out(masked, inputs)
    expected = _out(_zeroing_reference(reference, keep_columns), inputs)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    assert (out - full).abs().max() > 1e-3  # the masks act
    stats = mm.l0_stats(masked)
    assert stats["layer2maxl0"] == {n: layouts[n].heads for n in names}
    assert stats["layer2l0"] == {n: 1.0 for n in names}


@pytest.mark.parametrize("mode", MODES)
def test_kv_group_units_of_grouped_query_attention(mode):
    model = _build("llama_gqa")
    reference = copy.deepcopy(model)
    inputs = _inputs("llama_gqa")
    masked, names = _convert(model, mode, unit="kv_group")
    layout = head_layouts(reference)[names[0]]
    keep = torch.tensor([False, True])  # KV group 1: query heads 2 and 3
    for name in names:
        assert masked.get_submodule(name).weight_mask.shape == (2,)
        _set_units(masked.get_submodule(name), keep)
    cols = _columns(layout, "kv_group", keep)
    assert cols.tolist() == [False] * 16 + [True] * 16
    expected = _out(_zeroing_reference(reference, dict.fromkeys(names, cols)), inputs)
    torch.testing.assert_close(_out(masked, inputs), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_ablations_switch_back_bit_for_bit(family):
    model = _build(family)
    reference = copy.deepcopy(model)
    inputs = _inputs(family)
    original = _out(model, inputs)
    masked, names = _convert(model, "continuous_sparsification")
    keep = torch.tensor([False, False, True, False])
    for name in names:
        _set_units(masked.get_submodule(name), keep)
    circuit = _out(masked, inputs)
    layouts = head_layouts(reference)
    mm.set_ablation(masked, "zero_ablate")  # the circuit removed: heads 0, 1 and 3 stay
    expected = _out(_zeroing_reference(copy.deepcopy(reference), {
        n: _columns(layouts[n], "head", ~keep) for n in names}), inputs)
    torch.testing.assert_close(_out(masked, inputs), expected, rtol=0, atol=1e-6)
    for ablation in ("random_ablate", "randomly_sampled", "complement_sampled"):
        mm.set_ablation(masked, ablation)
        ablated = _out(masked, inputs)
        assert not torch.equal(ablated, circuit)
        if ablation != "random_ablate":  # one whole head drawn and removed: 8 columns
            layer = masked.get_submodule(names[0])
            dead = (layer.effective_weight() == 0).all(dim=1 if family == "gpt2" else 0)
            assert int(dead.sum()) == 8 and dead.reshape(4, 8).all(1).sum() == 1
            if ablation == "complement_sampled":
                assert not dead.reshape(4, 8)[2].any()  # drawn outside the circuit
    mm.set_ablation(masked, "none")
    assert torch.equal(_out(masked, inputs), circuit)
    mm.use_masks(masked, False)
    assert torch.equal(_out(masked, inputs), original)


def test_controller_trains_head_masks_to_the_planted_heads_at_the_target_density():
    torch.manual_seed(0)
    model = _build("gpt2")
    inputs = _inputs("gpt2")
    with torch.no_grad():  # heads that matter: a random init's attention barely does
        for block in model.transformer.h:
            block.attn.c_proj.weight.mul_(30)
    reference = copy.deepcopy(model)
    planted = torch.tensor([False, True, False, False])  # head 1 of each layer: 2 of 8 heads
    teacher = _out(_zeroing_reference(reference, {
        n: _columns(lay, "head", planted) for n, lay in head_layouts(reference).items()}), inputs)
    masked, names = _convert(model, "hard_concrete", mask_init_percentage=0.9)
    gates = [masked.get_submodule(n).weight_mask.log_alpha for n in names]
    masked.train()
    with torch.no_grad():
        assert float(expected_density(masked)) == pytest.approx(
            float(sum(masked.get_submodule(n).weight_mask.l0() for n in names)) / 8)
    controller = DensityController(target_density=0.25, lr=1.0, lambda_2_init=10.0)
    opt = torch.optim.Adam(gates, lr=0.05)
    for _ in range(150):
        loss = 300 * torch.nn.functional.mse_loss(masked(**inputs).logits, teacher)
        loss = loss + controller(masked)
        opt.zero_grad()
        loss.backward()
        opt.step()
    masked.eval()
    assert mm.l0_stats(masked)["total_l0"] == 2.0
    assert [masked.get_submodule(n).weight_mask.circuit().tolist() for n in names] == [
        planted.tolist()] * 2


def test_magnitude_pruning_keeps_the_heads_with_the_largest_columns():
    model = _build("llama_gqa")
    with torch.no_grad():
        for i, layer in enumerate(model.model.layers):
            w = layer.self_attn.o_proj.weight
            w.mul_(0.01)
            w[:, 8 * i: 8 * i + 8] *= 1000  # layer i: head i is by far the largest
            w[:, 24:32] *= 500  # head 3 second everywhere
    masked, names = _convert(model, "magnitude_pruning", prune_percentage=0.5)
    assert [masked.get_submodule(n).weight_mask.keep.tolist() for n in names] == [
        [True, False, False, True], [False, True, False, True]]
    glob = _convert(_build("llama_gqa"), "magnitude_pruning", unit="kv_group",
                    prune_percentage=0.5)[0]
    total = mm.l0_stats(glob)
    assert total["max_l0"] == 4 and total["total_l0"] == 2.0


def test_global_magnitude_scope_ranks_heads_across_layers():
    model = _build("gpt2")
    with torch.no_grad():
        model.transformer.h[1].attn.c_proj.weight[:16] *= 100  # layer 1, heads 0 and 1
    names = list(head_layouts(model))
    masked = mm.convert(model, ("magnitude_pruning", {"scope": "global", **target_rules(
        {"hf.Conv1D": names}, {"mask_unit": "head", "prune_percentage": 0.75})}))
    keeps = [masked.get_submodule(n).weight_mask.keep.tolist() for n in names]
    assert keeps == [[False] * 4, [True, True, False, False]]


def test_bad_head_targets_are_refused_and_leave_the_model_unchanged():
    model = _build("gpt2")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="Attention output projections of this model"):
        mm.convert(model, ("hard_concrete", {"hf.Conv1D": {"*mlp.c_proj": {"mask_unit": "head"}}}))
    assert not mm.masked_modules(model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="bias belongs to no head"):
        mm.convert(model, ("hard_concrete", {"hf.Conv1D": {"*attn.c_proj": {
            "mask_unit": "head", "mask_bias": True}}}))
    with pytest.raises(ValueError, match="matches no attention block"):
        MaskTargets(mask_method="hard_concrete", mask_hparams={"mask_unit": "head"},
                    target_layers=["*mlp"]).mode_spec(model)


def test_mask_targets_name_attention_blocks_and_export_bakes_the_heads():
    model = _build("bert")
    inputs = _inputs("bert")
    method, spec = MaskTargets(mask_method="continuous_sparsification",
                               mask_hparams={"mask_unit": "head", "mask_init_value": 1.0},
                               target_layers=["encoder.layer.*.attention"]).mode_spec(model)
    masked = mm.convert(model, (method, spec)).eval()
    assert sorted(mm.masked_modules(masked)) == [
        "encoder.layer.0.attention.output.dense", "encoder.layer.1.attention.output.dense"]
    for name in mm.masked_modules(masked):
        _set_units(masked.get_submodule(name), torch.tensor([False, True, True, False]))
    out = _out(masked, inputs)
    exported = mm.export(masked)
    assert not mm.masked_modules(exported)
    torch.testing.assert_close(_out(exported, inputs), out, rtol=0, atol=1e-6)
    w = exported.encoder.layer[0].attention.output.dense.weight
    assert (w[:, :8] == 0).all() and (w[:, 24:] == 0).all() and (w[:, 8:24] != 0).all()
