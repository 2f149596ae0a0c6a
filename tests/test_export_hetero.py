"""Per-layer (heterogeneous) exports reload with ``trust_remote_code``, without this library.

For every gradnas family and both GQA modes a tiny random model keeps a different number of
units in each layer (chosen by hand so the layers surely differ, plus one searched case), is
exported and saved with plain ``model.save_pretrained``; one subprocess that cannot import
``modeopt_masks`` reloads every folder with ``AutoModel*.from_pretrained(...,
trust_remote_code=True)`` and recomputes logits and greedy ``generate()`` tokens (KV cache
on). Hand-sliced hidden-size and depth changes (embeddings, norms, tied head, a dropped
layer) go through the same record.
"""

from __future__ import annotations

import json
import re

import pytest
import torch

import modeopt_masks as mm
from modeopt_masks.hf_remote import MODELING_FILE, save_pretrained, structure_record
from modeopt_masks.hf_remote_modeling import STRUCTURE_KEY, apply_structure
from modeopt_masks.model_card import model_card
from modeopt_masks.structured import gradnas_hparams

transformers = pytest.importorskip("transformers")
pytest.importorskip("safetensors.torch")

try:
    from .export_helpers import build, inputs, is_decoder, loss, main_output, reload, save_expected
except ImportError:
    from export_helpers import build, inputs, is_decoder, loss, main_output, reload, save_expected

RULES = {
    "bert": {}, "gpt2": {}, "gpt_neox": {}, "vit": {},
    "llama_groups": {"hf.attention": {"gqa": "groups"}},
    "llama_even": {"hf.attention": {"gqa": "even"}},
    "mistral_groups": {"hf.attention": {"gqa": "groups"}},
    "phi3_even": {"hf.attention": {"gqa": "even"}},
}
SEARCHED = "llama_searched"  # the user's route: mm.prune without uniform, then export
HAND = "llama_hidden_depth"  # hidden size and depth changed by hand (what new axes export)
CASES = (*RULES, SEARCHED, HAND)


def _layer(name: str) -> int:
    return int(re.search(r"\.(\d+)\.", name + ".").group(1))


def _hand_selection(model) -> None:
    """Layer 0 keeps every other unit, layer 1 all but every fourth: the layers differ, and
    GQA groups keep the same number of query heads each (``gqa="even"``)."""
    for name, hp in gradnas_hparams(model).items():
        units = range(hp.n_units)
        if _layer(name) == 0:
            hp.keep([u for u in units if u % 2 == 0])
        else:
            hp.keep([u for u in units if u % 4] if hp.n_units >= 4 else list(units))


def _slice_hidden_and_depth(model):
    """A Llama with 3 layers -> layer 1 dropped (config says 2) and hidden 64 -> 48 kept
    channels everywhere (config keeps 64): embeddings, norms and the tied head change."""
    keep = torch.tensor([c for c in range(64) if c % 4 != 1])
    inner = model.model
    del inner.layers[1]
    for i, layer in enumerate(inner.layers):
        layer.self_attn.layer_idx = i
    model.config.num_hidden_layers = 2
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = model.config.layer_types[:2]

    def cut(module, dim):
        module.weight = torch.nn.Parameter(module.weight.index_select(dim, keep).clone())

    cut(inner.embed_tokens, 1)
    inner.embed_tokens.embedding_dim = len(keep)
    cut(inner.norm, 0)
    for layer in inner.layers:
        cut(layer.input_layernorm, 0)
        cut(layer.post_attention_layernorm, 0)
        for lin in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj,
                    layer.mlp.gate_proj, layer.mlp.up_proj):
            cut(lin, 1)
            lin.in_features = len(keep)
        for lin in (layer.self_attn.o_proj, layer.mlp.down_proj):
            cut(lin, 0)
            lin.out_features = len(keep)
    model.lm_head.weight = inner.embed_tokens.weight  # tied, as the config says
    return model


def _build_three_layer_tied_llama():
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=48, max_position_embeddings=32, hidden_size=64, num_hidden_layers=3,
        num_attention_heads=8, num_key_value_heads=2, intermediate_size=96, pad_token_id=0,
        head_dim=8, tie_word_embeddings=True))


def _export(case: str):
    """(model before export, exported model) of ``case``; the first is None when not masked."""
    if case == HAND:
        return None, _slice_hidden_and_depth(_build_three_layer_tied_llama().eval())
    if case == SEARCHED:
        model, _ = mm.prune(build("llama").eval(), ("gradnas", {"hf.attention": {"gqa": "even"}}),
                            constraints={"params": "70%"},
                            config={"data_loader": [inputs(case, s) for s in (1, 2)],
                                    "loss_func": loss, "progress": False})
    else:
        model = mm.convert(build(case).eval(), ("gradnas", RULES[case]))
        _hand_selection(model)
    return model, None


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Per case: the saved config, the exported outputs and tokens, and the reload's."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("hetero")
    info: dict[str, dict] = {}
    for case in CASES:
        masked_model, model = _export(case)
        x = inputs(case, 7)
        entry: dict = {}
        if masked_model is not None:
            entry["kept"] = {n: hp.active for n, hp in gradnas_hparams(masked_model).items()}
            with torch.no_grad():
                masked = main_output(masked_model(**x))
            model = mm.export(masked_model)
        with torch.no_grad():
            out = main_output(model(**x))
        if masked_model is not None:
            entry["masked_vs_exported"] = float((masked - out).abs().max())
        if is_decoder(case):
            entry["tokens"] = model.generate(**x, max_new_tokens=6, do_sample=False,
                                             use_cache=True).tolist()
        entry["params"] = sum(p.numel() for p in model.parameters())
        folder = root / case
        if case == HAND:  # sliced by hand: no export attached the saving, call it directly
            save_pretrained(model, folder)
        else:
            model.save_pretrained(folder)
        entry["left_in_config"] = {STRUCTURE_KEY, "auto_map"} & set(model.config.to_dict())
        entry["saved"] = json.loads((folder / "config.json").read_text())
        entry["modeling_file"] = (folder / MODELING_FILE).is_file()
        save_expected(folder, out, x)
        info[case] = entry
    results = reload([root / c for c in CASES], root, trust_remote_code=True,
                     resave=(root / "llama_even",))
    for case in CASES:
        info[case]["reloaded"] = results[str(root / case)]
    return info


@pytest.mark.parametrize("case", [c for c in CASES if c != HAND])
def test_layers_really_differ(exported, case):
    kept = exported[case]["kept"]
    by_kind: dict[str, set[int]] = {}
    for name, active in kept.items():
        by_kind.setdefault(name.rsplit(".", 1)[-1], set()).add(active)
    assert any(len(v) > 1 for v in by_kind.values()), kept


@pytest.mark.parametrize("case", CASES)
def test_masked_exported_reloaded_agree(exported, case):
    entry = exported[case]
    if "masked_vs_exported" in entry:
        assert entry["masked_vs_exported"] <= 1e-5
    reloaded = entry["reloaded"]
    assert reloaded["class"].startswith("Pruned")
    assert reloaded["hf_module"].startswith("transformers_modules.")  # the folder's file
    assert reloaded["diff"] <= 1e-5
    assert reloaded["params"] == entry["params"]
    if is_decoder(case):
        assert reloaded["tokens"] == entry["tokens"]


@pytest.mark.parametrize("case", CASES)
def test_folder_carries_record_and_remote_code(exported, case):
    entry = exported[case]
    saved = entry["saved"]
    assert entry["modeling_file"]
    assert all(v.startswith("modeling_modeopt_pruned.Pruned") for v in saved["auto_map"].values())
    assert saved["architectures"][0] in saved["auto_map"][next(iter(saved["auto_map"]))]
    assert saved[STRUCTURE_KEY]["modules"]
    # the in-memory config is not left with the record / auto_map
    assert entry["left_in_config"] == set()


def test_gqa_modes_record_what_they_prune(exported):
    groups = exported["llama_groups"]["saved"][STRUCTURE_KEY]["modules"]
    even = exported["llama_even"]["saved"][STRUCTURE_KEY]["modules"]
    # groups: layer 0 keeps 1 of 2 KV heads (k_proj 8 rows), the query heads per KV head stay
    assert groups["model.layers.0.self_attn.k_proj"]["shapes"]["weight"] == [8, 64]
    assert "num_key_value_groups" not in groups.get("model.layers.0.self_attn", {}).get(
        "attrs", {})
    # even: K/V stay whole, every layer has its own query heads per KV head
    assert "model.layers.0.self_attn.k_proj" not in even
    assert even["model.layers.0.self_attn"]["attrs"]["num_key_value_groups"] == 2
    assert even["model.layers.1.self_attn"]["attrs"]["num_key_value_groups"] == 3


def test_hidden_depth_and_tied_head(exported):
    entry = exported[HAND]
    modules = entry["saved"][STRUCTURE_KEY]["modules"]
    assert modules["model.embed_tokens"]["shapes"]["weight"] == [48, 48]
    assert modules["model.norm"]["shapes"]["weight"] == [48]
    assert not any(name.startswith("model.layers.2") for name in modules)
    assert entry["saved"]["num_hidden_layers"] == 2
    assert entry["reloaded"]["tied"] is True


def test_reloaded_model_saves_again_without_the_library(exported):
    resaved = exported["llama_even"]["reloaded"]["resaved"]
    assert resaved["diff"] <= 1e-5 and resaved["class"] == "PrunedLlamaForCausalLM"
    assert resaved["tokens"] == exported["llama_even"]["tokens"]


def test_uniform_export_stays_plain_and_forced_record_is_empty(tmp_path):
    model = mm.convert(build("gpt2").eval(), ("gradnas", {"hf.attention": None}))
    for hp in gradnas_hparams(model).values():
        hp.keep(list(range(64)))
    model = mm.export(model)
    model.save_pretrained(tmp_path / "plain")
    assert not (tmp_path / "plain" / MODELING_FILE).exists()
    assert "trust_remote_code" not in model_card(model)
    assert "auto_map" not in json.loads((tmp_path / "plain" / "config.json").read_text())
    # forced remote code on a uniform model: an empty record, the subclass builds the stock one
    save_pretrained(model, tmp_path / "forced", force_remote_code=True)
    saved = json.loads((tmp_path / "forced" / "config.json").read_text())
    assert saved[STRUCTURE_KEY]["modules"] == {}
    again = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "forced",
                                                              trust_remote_code=True).eval()
    x = inputs("gpt2", 3)["input_ids"]
    with torch.no_grad():
        assert torch.allclose(again(x).logits, model(x).logits, atol=1e-5)


def test_stock_load_without_remote_code_fails_loudly(tmp_path):
    model = mm.convert(build("llama").eval(), ("gradnas", RULES["llama_even"]))
    _hand_selection(model)
    model = mm.export(model)
    model.save_pretrained(tmp_path)
    with pytest.raises(RuntimeError, match="ignore_mismatched_sizes"):
        transformers.AutoModelForCausalLM.from_pretrained(tmp_path)
    assert "trust_remote_code=True" in model_card(model)  # the card says how to load it


def test_unrecordable_models_are_refused_unchanged(tmp_path):
    converted = mm.convert(build("gpt2").eval(), "gradnas")
    with pytest.raises(ValueError, match="export it first"):
        structure_record(converted)
    save_pretrained(converted, tmp_path / "converted")  # modes: the plain (checkpoint) save
    assert not (tmp_path / "converted" / MODELING_FILE).exists()
    model = build("llama").eval()
    del model.model.layers[1]  # a dropped layer the config still counts
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"missing: \['model.layers.1'"):
        save_pretrained(model, tmp_path / "bad")
    assert not (tmp_path / "bad").exists()
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


def test_apply_structure_names_what_does_not_fit():
    model = build("gpt2")
    with pytest.raises(ValueError, match="no module"):
        apply_structure(model, {"format": 1, "modules": {"transformer.h.7.mlp": {}}})
    with pytest.raises(ValueError, match="format 2"):
        apply_structure(model, {"format": 2, "modules": {}})
    with pytest.raises(ValueError, match="not a tensor"):
        apply_structure(model, {"format": 1, "modules": {
            "transformer.h.0.mlp.c_fc": {"shapes": {"nf": [3]}}}})
