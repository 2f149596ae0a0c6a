"""The circuit and probing interfaces behave alike where they offer the same thing."""

from __future__ import annotations

import pytest
import torch
import transformers

from modeopt_masks.circuit import CircuitConfig, CircuitModel
from modeopt_masks.probing import CircuitProbe


def _gpt() -> transformers.GPT2Model:
    torch.manual_seed(0)
    return transformers.GPT2Model(transformers.GPT2Config(
        n_embd=16, n_layer=1, n_head=2, vocab_size=20, n_positions=8))


def test_l0_statistics_are_hard_counts_in_training_for_circuits_and_probes():
    hparams = {"mask_init_value": 0.5}  # soft mask sigmoid(0.5) in training, all kept in eval
    probe = CircuitProbe({"probe_vector": "mlp_update_0", "target_layers": ["h.0.mlp.c_fc"],
                          "mask_hparams": hparams}, _gpt())
    circuit = CircuitModel(CircuitConfig(target_layers=["h.0.mlp.c_fc"], mask_hparams=hparams),
                           _gpt())
    for owner, model in ((probe, probe.model), (circuit, circuit.wrapped_model)):
        owner.train()
        stats = owner.compute_l0_statistics()
        assert stats["total_l0"] == stats["max_l0"] == 16 * 64
        assert model.h[0].mlp.c_fc.weight_mask.training  # the masks were put back in training


def test_every_config_names_the_valid_fields_of_a_misspelt_one():
    from modeopt_masks.probing import ResidualUpdateModelConfig, SubnetworkProbeConfig

    with pytest.raises(ValueError, match=r"\['l0_lamda'\].*valid fields.*'l0_lambda'"):
        CircuitConfig(target_layers=["x"], l0_lamda=1.0)
    with pytest.raises(ValueError, match=r"valid fields.*'probe_activations'.*'target_layers'"):
        SubnetworkProbeConfig(probe_vector="mlp_update_0", n_classes=2, target_layer=["x"])
    with pytest.raises(ValueError, match=r"valid fields.*'stream'"):
        ResidualUpdateModelConfig(target_layers=[0], streams=True)


def test_get_temperature_says_why_when_no_mask_has_one():
    import torch.nn as nn

    import modeopt_masks as mm

    net = mm.convert(nn.Sequential(nn.Linear(2, 2)), "magnitude_pruning")
    with pytest.raises(ValueError, match="none of the masks has a temperature"):
        mm.get_temperature(net)
