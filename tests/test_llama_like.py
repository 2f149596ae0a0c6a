"""Every Llama-like decoder of the installed transformers (discovered from its source, see
``llama_like.py``) goes through gradnas prune + export (exported == masked logits) and
``ResidualUpdateModel`` (updates add up to the layer outputs), or is refused with an error
that says why and names the switch. Tiny random models: hidden 32, 2 layers."""

from __future__ import annotations

import pytest
import torch

import modeopt_masks as mm
from modeopt_masks.probing import ResidualUpdateModel
from modeopt_masks.structured import gradnas_hparams

try:
    from .llama_like import NOT_A_PLAIN_DECODER, discover, tiny_model
except ImportError:  # tests/ is not a package
    from llama_like import NOT_A_PLAIN_DECODER, discover, tiny_model

DISCOVERED = [t for t in discover() if t not in NOT_A_PLAIN_DECODER]
#: must be among the discovered ones and work fully (attention and MLP searched)
REQUIRED = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "phi3",
            "granite", "smollm3")
#: refused by design, with the reason their error gives
REFUSED = {"olmo2": "normalises over all", "olmo3": "normalises over all",
           "bitnet": "normalises over all", "diffllama": "differential attention",
           "doge": "dynamic mask attention"}
#: their MLPs normalise the hidden channels together as well: nothing is searchable
MLP_REFUSED = ("bitnet",)
IDS = torch.randint(1, 64, (2, 6), generator=torch.Generator().manual_seed(0))


def _model(model_type):
    try:
        model = tiny_model(model_type)
        with torch.no_grad():
            model(input_ids=IDS)
        return model
    except Exception as e:  # noqa: BLE001 - the generic tiny config does not fit every family
        if model_type in REQUIRED:
            raise
        pytest.skip(f"the generic tiny config does not build {model_type}: {e!s:.100}")


def test_the_required_families_are_discovered():
    assert set(REQUIRED) <= set(DISCOVERED)


@pytest.mark.parametrize("model_type", DISCOVERED)
def test_gradnas_prunes_and_exports_exactly(model_type):
    model = _model(model_type)
    config = {"data_loader": [{"input_ids": IDS, "labels": IDS}], "progress": False}
    if model_type in REFUSED:
        before = {k: v.clone() for k, v in model.state_dict().items()}
        with pytest.raises(ValueError, match=REFUSED[model_type]):
            mm.prune(model, "gradnas", constraints={"params": "85%"}, config=config)
        assert not mm.mode_history(model) and not gradnas_hparams(model)
        assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
        config["hf.attention"] = {"*": None}  # the MLPs stay searchable
        if model_type in MLP_REFUSED:
            with pytest.raises(ValueError, match="hidden channels together"):
                mm.prune(model, "gradnas", constraints={"params": "85%"}, config=config)
            return
    target = "85%" if model_type not in REFUSED else sum(p.numel() for p in model.parameters()) - 1
    model, result = mm.prune(model, "gradnas", constraints={"params": target}, config=config)
    hps = gradnas_hparams(model)
    kinds = {hp.structure.key for hp in hps.values()}
    assert kinds == ({"hf.mlp"} if model_type in REFUSED else {"hf.attention", "hf.mlp"})
    assert any(hp.active < hp.n_units for hp in hps.values())
    with torch.no_grad():
        masked = model(input_ids=IDS).logits
    model = mm.export(model)
    with torch.no_grad():
        exported = model(input_ids=IDS).logits
    assert sum(p.numel() for p in model.parameters()) == result.constraints["params"]["achieved"]
    torch.testing.assert_close(exported, masked, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("model_type", DISCOVERED)
def test_residual_updates_add_up_to_the_layer_outputs(model_type):
    rum = ResidualUpdateModel({"target_layers": [0, 1], "stream": True}, _model(model_type))
    out = rum(input_ids=IDS, output_hidden_states=True)
    hs, cache = out.hidden_states, rum.vector_cache
    for i in (0, 1):
        torch.testing.assert_close(hs[i] + cache[f"attn_update_{i}"], cache[f"attn_stream_{i}"])
        torch.testing.assert_close(cache[f"attn_stream_{i}"] + cache[f"mlp_update_{i}"],
                                   cache[f"mlp_stream_{i}"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(hs[1], cache["mlp_stream_0"])


def test_every_registered_family_is_tested():
    """Each family record gradnas reads is exercised here or by ``gradnas_helpers.FAMILIES``."""
    from modeopt_masks.structured import FAMILIES

    try:
        from .gradnas_helpers import FAMILIES as HELPER_FAMILIES
    except ImportError:  # tests/ is not a package
        from gradnas_helpers import FAMILIES as HELPER_FAMILIES

    tested = set(DISCOVERED) | set(HELPER_FAMILIES)
    untested = [name for name, fam in FAMILIES.items()
                if (fam.attention or fam.mlp or fam.refused) and not set(fam.model_types) & tested]
    assert not untested
