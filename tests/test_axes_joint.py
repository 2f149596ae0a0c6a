"""The joint search over heads, MLP channels, hidden size and depth, per family; KV groups
with uniform export; FLOPs targets; bounds; save / restore."""

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
    loss,
    main_output,
    scored,
)

import modeopt_masks as mm
from modeopt_masks.searchers import measure_flops
from modeopt_masks.structured import gradnas_hparams

ALL = ["heads", "mlp", "hidden", "depth"]
RATIOS = {"hidden": [1.0, 0.75, 0.5], "depth": [1.0, 0.75, 0.5]}


def _joint_model(family):
    return build(family, hidden=32, layers=4, heads=4, kv=2, inter=64)


@pytest.mark.parametrize("family", STREAM_FAMILIES)
def test_joint_search_lands_on_target_and_exports_what_it_masks(family):
    torch.set_num_threads(1)
    model = _joint_model(family)
    before = sum(p.numel() for p in model.parameters())
    model = scored(family, model, {"axes": ALL}, n_batches=2)
    for target in (0.5, 0.7, 0.9):
        res, dense, masked, exported, kept, pruned, ratio = export_at(
            family, model, target, before, axis_ratios=RATIOS)
        assert target - 0.01 <= ratio <= target + 1e-9
        assert (masked - exported).abs().max() <= 1e-5
        assert (masked - dense).abs().max() > 1e-3
        tight = [c for c in res.candidates if c.get("tight")]
        key = "kl" if family in DECODERS else "loss"  # "auto": KL where outputs have logits
        assert tight and all(key in c for c in tight)
        assert min(c[key] for c in tight) == next(
            c[key] for c in tight if all(res.selection[k] == c[k] for k in c if k in
                                         res.selection))
        if kept is not None:
            assert pruned.config.hidden_size == len(kept)
        if family in DECODERS:
            assert_generates_same_with_and_without_cache(pruned)


def _best(res, key):
    return min((c for c in res.candidates if c["feasible"] and c["tight"]), key=lambda c: c[key])


def test_candidates_are_ranked_by_kl_to_the_unpruned_model():
    model = _joint_model("llama")
    before = sum(p.numel() for p in model.parameters())
    model = scored("llama", model, {"axes": ALL}, n_batches=2)
    res, *_, pruned, _ratio = export_at("llama", model, 0.6, before, axis_ratios=RATIOS)
    names = [n for n, hp in gradnas_hparams(model).items() if hp.structure.kind in
             ("hidden", "blocks")]
    feasible = [c for c in res.candidates if c["feasible"]]
    assert len(feasible) > 1 and all("kl" in c and "loss" in c for c in feasible)
    best = _best(res, "kl")
    assert all(res.selection[n] == best[n] for n in names)
    # the recorded KL is the exported model's divergence from the unpruned one
    full = _joint_model("llama")
    kl = []
    with torch.no_grad():
        for b in [batch("llama", 50 + i) for i in range(2)]:
            ref = torch.log_softmax(full(**b).logits, -1)
            logp = torch.log_softmax(pruned(**b).logits, -1)
            kl.append(float((ref.exp() * (ref - logp)).sum(-1).mean()))
    assert abs(sum(kl) / 2 - best["kl"]) < 1e-4


def test_rank_by_loss_takes_the_candidate_of_lowest_held_out_loss():
    model = _joint_model("llama")
    before = sum(p.numel() for p in model.parameters())
    model = scored("llama", model, {"axes": ALL}, n_batches=2)
    res, *_ = export_at("llama", model, 0.6, before, axis_ratios=RATIOS, rank_by="loss")
    best = _best(res, "loss")
    assert all(res.selection[n] == best[n] for n in res.selection if n in best)
    with pytest.raises(ValueError, match="rank_by must be one of"):
        export_at("llama", model, 0.6, before, axis_ratios=RATIOS, rank_by="ppl")


def test_rank_steps_rank_candidates_after_a_short_recovery_and_restore_the_weights():
    model = _joint_model("llama")
    before = sum(p.numel() for p in model.parameters())
    model = scored("llama", model, {"axes": ALL}, n_batches=2)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    data = [batch("llama", 50 + i) for i in range(2)]  # distilled on the ranking batches
    res, dense, masked, exported, *_ = export_at(
        "llama", model, 0.6, before, axis_ratios=RATIOS, rank_steps=4, rank_lr=1e-3,
        data_loader=data)
    feasible = [c for c in res.candidates if c["feasible"]]
    assert len(feasible) > 1
    # distillation moved every candidate towards the unpruned model before it was ranked
    assert all(c["kl"] < c["kl_before_steps"] for c in feasible)
    best = _best(res, "kl")
    assert all(res.selection[n] == best[n] for n in res.selection if n in best)
    # ... and left the weights as they were: the export is the untrained pruned model
    assert (masked - exported).abs().max() <= 1e-5
    after = export_at("llama", model, 0.6, before, axis_ratios=RATIOS)[0]
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())
    assert after.candidates[0]["kl"] == pytest.approx(
        feasible[0]["kl_before_steps"], rel=1e-6)
    with pytest.raises(ValueError, match="rank_steps must be an integer"):
        export_at("llama", model, 0.6, before, axis_ratios=RATIOS, rank_steps=-1)


def test_axis_bounds_hold():
    model = _joint_model("llama")
    before = sum(p.numel() for p in model.parameters())
    model = scored("llama", model, {"axes": ALL, "hf.depth": {"min_ratio": 0.75},
                                    "hf.hidden": {"min_ratio": 0.75}}, n_batches=2)
    res, *_, ratio = export_at("llama", model, 0.5, before, axis_ratios=RATIOS)
    assert res.selection["model.layers"] >= 3 and res.selection["model.embed_tokens"] >= 24
    assert 0.49 <= ratio <= 0.5


def test_flops_target_is_exact():
    torch.set_num_threads(1)
    model = _joint_model("llama")
    probe = batch("llama", 99)
    total, _ = measure_flops(model, probe)
    data = [batch("llama", i) for i in range(4)]
    model, res = mm.prune(model, ("gradnas", {"axes": ALL}), constraints={"flops": "60%"},
                          dummy_input=probe, config={"data_loader": data, "loss_func": loss,
                                                     "progress": False, "axis_ratios": RATIOS})
    model = mm.export(model)
    after, _ = measure_flops(model, probe)
    assert after == pytest.approx(res.constraints["flops"]["achieved"], rel=1e-9)
    assert 0.59 <= after / total <= 0.6


@pytest.mark.parametrize("gqa", ["groups", "even"])
def test_kv_groups_with_uniform_export_reload(gqa, tmp_path):
    torch.set_num_threads(1)
    transformers = pytest.importorskip("transformers")
    model = build("llama", hidden=64, layers=4, heads=4, kv=2, inter=64)
    data = [batch("llama", i) for i in range(4)]
    model, res = mm.prune(model, ("gradnas", {"axes": ALL, "uniform": True,
                                              "hf.attention": {"gqa": gqa}}),
                          constraints={"params": "60%"},
                          config={"data_loader": data, "loss_func": loss, "progress": False,
                                  "axis_ratios": RATIOS})
    probe = batch("llama", 99)
    with torch.no_grad():
        masked = model(**probe).logits
    heads = {hp.active * hp.structure.heads_per_unit for hp in gradnas_hparams(model).values()
             if hp.structure.key == "hf.attention"}
    model = mm.export(model)
    assert len(heads) == 1 and model.config.num_attention_heads == heads.pop()
    kv = model.config.num_key_value_heads
    assert kv == (2 if gqa == "even" else model.config.num_attention_heads // 2)
    model.save_pretrained(tmp_path)
    again = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert (again(**probe).logits - masked).abs().max() <= 1e-5
    assert_generates_same_with_and_without_cache(again)


def test_save_restore_replays_hidden_and_depth(tmp_path):
    model = _joint_model("llama")
    data = [batch("llama", i) for i in range(4)]
    model, _ = mm.prune(model, ("gradnas", {"axes": ALL}), constraints={"params": "60%"},
                        config={"data_loader": data, "loss_func": loss, "progress": False,
                                "axis_ratios": RATIOS})
    mm.save(model, tmp_path)
    fresh = mm.restore(_joint_model("llama"), tmp_path)
    probe = batch("llama", 99)
    with torch.no_grad():
        assert torch.equal(main_output(fresh(**probe)), main_output(model(**probe)))
    assert {n: hp.kept for n, hp in gradnas_hparams(fresh).items()} == {
        n: hp.kept for n, hp in gradnas_hparams(model).items()}


def test_iterations_with_joint_search_is_an_error():
    model = _joint_model("llama")
    with pytest.raises(ValueError, match="iterations > 1"):
        mm.prune(model, ("gradnas", {"axes": ALL}), constraints={"params": "60%"},
                 config={"data_loader": [batch("llama", 0)], "loss_func": loss,
                         "progress": False, "iterations": 2})
    assert not any(type(m).__name__.startswith(("StreamMasked", "UnitMasked"))
                   for m in model.modules())
