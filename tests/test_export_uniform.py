"""Uniform gradnas exports reload with stock transformers, in a process without this library.

For every gradnas family (and both GQA modes) a tiny random model is pruned with
``uniform=True``, exported and saved with ``save_pretrained``; one subprocess that
cannot import ``modeopt_masks`` reloads every folder with ``AutoModel*.from_pretrained``
and recomputes logits and greedy ``generate()`` tokens (KV cache on).
"""

from __future__ import annotations

import pytest
import torch

import modeopt_masks as mm
from modeopt_masks.hf_export import config_updates, layer_shapes
from modeopt_masks.structured import gradnas_hparams

transformers = pytest.importorskip("transformers")
pytest.importorskip("safetensors.torch")

try:
    from .export_helpers import build, inputs, loss, main_output, reload, save_expected
except ImportError:
    from export_helpers import build, inputs, loss, main_output, reload, save_expected

#: families whose config derives the head size from hidden_size / heads: only MLPs are
#: stock-expressible, so their attention stays unpruned here (see test_heads_not_expressible)
MLP_ONLY = {"hf.attention": None}


RULES = {
    "bert": MLP_ONLY, "gpt2": MLP_ONLY, "gpt_neox": MLP_ONLY, "vit": {},
    # the MLPs alone cannot reach the target: the heads are pruned too
    "llama_groups": {"hf.attention": {"gqa": "groups"}, "hf.mlp": {"ratios": [0.75, 1.0]}},
    "llama_even": {"hf.attention": {"gqa": "even"}, "hf.mlp": {"ratios": [0.75, 1.0]}},
    "mistral_even": {"hf.attention": {"gqa": "even"}},
}
CASES = tuple(RULES)
DECODERS = ("gpt2", "gpt_neox", "llama_groups", "llama_even", "mistral_even")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Per case: what the masked / exported models computed, and the reload's results."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("uniform")
    info: dict[str, dict] = {}
    for case in CASES:
        model = build(case).eval()
        before = sum(p.numel() for p in model.parameters())
        model, result = mm.prune(
            model, ("gradnas", {**RULES[case], "uniform": True}), constraints={"params": "80%"},
            config={"data_loader": [inputs(case, s) for s in (1, 2)], "loss_func": loss,
                    "progress": False})
        counts = {n: (hp.structure.key, hp.active) for n, hp in gradnas_hparams(model).items()}
        x = inputs(case, 7)
        with torch.no_grad():
            masked = main_output(model(**x))
        model = mm.export(model)
        with torch.no_grad():
            out = main_output(model(**x))
        entry = {"counts": counts, "before": before, "result": result,
                 "after": sum(p.numel() for p in model.parameters()),
                 "masked_vs_exported": float((masked - out).abs().max()),
                 "shapes": layer_shapes(model), "unexpressed": config_updates(model)[1],
                 "config": model.config.to_dict()}
        if case in DECODERS:
            entry["tokens"] = model.generate(**x, max_new_tokens=6, do_sample=False,
                                             use_cache=True).tolist()
        folder = root / case
        model.save_pretrained(folder)
        entry["saved_files"] = sorted(f.name for f in folder.iterdir())
        save_expected(folder, out, x)
        info[case] = entry
    reloaded = reload([root / c for c in CASES], root)
    for case in CASES:
        info[case]["reloaded"] = reloaded[str(root / case)]
    return info


@pytest.mark.parametrize("case", CASES)
def test_uniform_search_keeps_one_count_per_kind_and_meets_target(exported, case):
    entry = exported[case]
    by_key: dict[str, set[int]] = {}
    for key, active in entry["counts"].values():
        by_key.setdefault(key, set()).add(active)
    assert all(len(v) == 1 for v in by_key.values()), by_key
    params = entry["result"].constraints["params"]
    assert params["achieved"] <= params["target"]
    assert entry["after"] == pytest.approx(params["achieved"])
    assert entry["after"] < entry["before"]
    # pruned for real: at least one kind lost units
    assert entry["after"] <= 0.8 * entry["before"]


@pytest.mark.parametrize("case", CASES)
def test_config_describes_exported_shapes(exported, case):
    entry, cfg = exported[case], exported[case]["config"]
    assert entry["unexpressed"] == []
    for shape in entry["shapes"].values():
        if shape["kind"] == "mlp":
            width = cfg.get("intermediate_size", cfg.get("n_inner"))
            assert width == shape["channels"]
        elif case != "bert" and "num_key_value_heads" in cfg:
            assert (cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]) == (
                shape["heads"], shape["kv_heads"], shape["head_dim"])


@pytest.mark.parametrize("case", CASES)
def test_masked_exported_reloaded_agree(exported, case):
    entry = exported[case]
    assert entry["masked_vs_exported"] <= 1e-5
    reloaded = entry["reloaded"]
    assert reloaded["hf_module"].startswith("transformers.")
    # the config describes the model: a plain folder, no remote code
    assert "modeling_modeopt_pruned.py" not in entry["saved_files"]
    assert reloaded["diff"] <= 1e-5
    if case in DECODERS:
        assert reloaded["tokens"] == entry["tokens"]


def test_gqa_modes_prune_what_they_say(exported):
    groups = exported["llama_groups"]["config"]
    even = exported["llama_even"]["config"]
    # groups: whole KV groups go, 4 query heads per KV head stay; even: K/V stay
    assert groups["num_attention_heads"] == 4 * groups["num_key_value_heads"]
    assert even["num_key_value_heads"] == 2 and even["num_attention_heads"] % 2 == 0
    assert groups["num_attention_heads"] < 8 and even["num_attention_heads"] < 8


def test_heads_not_expressible_are_reported(tmp_path):
    """BERT's config cannot hold fewer heads: export says so, and reloading fails loudly."""
    model = mm.convert(build("bert").eval(), ("gradnas", {"hf.mlp": None}))
    for hp in gradnas_hparams(model).values():
        hp.keep([0, 1])
    model = mm.export(model)
    unexpressed = config_updates(model)[1]
    assert unexpressed and "heads=2" in unexpressed[0]
    model.save_pretrained(tmp_path)
    with pytest.raises(RuntimeError, match="ignore_mismatched_sizes"):
        transformers.AutoModel.from_pretrained(tmp_path)


def test_uniform_refuses_layers_of_different_sizes():
    model = build("llama_groups").eval()
    config = {"hf.mlp": {"*": {}, "*layers.0.*": {"ratios": [0.5, 1.0]}}, "uniform": True}
    model = mm.convert(model, ("gradnas", config))
    kept = {n: hp.kept for n, hp in gradnas_hparams(model).items()}
    with pytest.raises(ValueError, match="uniform"):
        mm.prune(model, "gradnas", constraints={"params": "80%"},
                 config={"data_loader": [inputs("llama_groups", 1)], "loss_func": loss,
                         "progress": False})
    assert {n: hp.kept for n, hp in gradnas_hparams(model).items()} == kept
