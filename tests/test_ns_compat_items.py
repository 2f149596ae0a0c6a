"""One test per item of the NeuroSurgeon drop-in issue (compat package and the core fixes)."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
import torch.nn as nn
import transformers

import modeopt_masks as mm
from modeopt_masks.circuit import CircuitConfig as CoreCircuitConfig
from modeopt_masks.circuit import CircuitModel as CoreCircuitModel
from modeopt_masks.compat.neurosurgeon.Masking.contsparse_layer import ContSparseLinear
from modeopt_masks.compat.neurosurgeon.Masking.hardconcrete_layer import HardConcreteLinear
from modeopt_masks.compat.neurosurgeon.Masking.magprune_layer import MagPruneLinear
from modeopt_masks.compat.neurosurgeon.Models.circuit_model import CircuitModel
from modeopt_masks.compat.neurosurgeon.Models.model_configs import CircuitConfig
from modeopt_masks.compat.neurosurgeon.Probing.circuit_probe import CircuitProbe
from modeopt_masks.compat.neurosurgeon.Probing.probe_configs import (
    CircuitProbeConfig,
    ResidualUpdateModelConfig,
    SubnetworkProbeConfig,
)
from modeopt_masks.compat.neurosurgeon.Probing.residual_update_model import ResidualUpdateModel
from modeopt_masks.compat.neurosurgeon.Probing.subnetwork_probe import SubnetworkProbe
from modeopt_masks.probing import SubnetworkProbe as CoreSubnetworkProbe
from modeopt_masks.probing import SubnetworkProbeConfig as CoreSubnetworkProbeConfig

_SMALL = {"hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2,
          "intermediate_size": 32, "vocab_size": 40, "max_position_embeddings": 32}


def _bert(cls=transformers.BertModel):
    torch.manual_seed(0)
    return cls(transformers.BertConfig(**_SMALL)).eval()


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))


_IDS = torch.tensor([[1, 5, 7, 9, 2], [1, 6, 8, 3, 2]])
_FIRST = torch.zeros(2, 5, dtype=torch.bool)
_FIRST[:, 0] = True


def _probe_config(**kw):
    return SubnetworkProbeConfig(
        probe_vectors="mlp_stream_1", n_classes=2,
        circuit_config=CircuitConfig(target_layers=["encoder.layer.1.output.dense"],
                                     mask_hparams={"mask_init_value": 1.0}),
        resid_config=ResidualUpdateModelConfig("bert", [1], True, False, updates=False,
                                               stream=True), **kw)


def test_item1_probe_configs_take_neurosurgeon_arguments_and_read_back():
    cfg = _probe_config(intermediate_size=8, labeling="token")
    assert (cfg.probe_vectors, cfg.n_classes, cfg.intermediate_size, cfg.labeling) == (
        "mlp_stream_1", 2, 8, "token")
    probe = SubnetworkProbe(cfg, _bert())
    assert isinstance(probe.probe, nn.Sequential) and probe.probe[0].out_features == 8
    cp_cfg = CircuitProbeConfig(probe_vectors="mlp_update_1", circuit_config=cfg.circuit_config,
                                resid_config=ResidualUpdateModelConfig("bert", [1], True, False),
                                loss="linear", n_classes=3)
    cp = CircuitProbe(cp_cfg, _bert())
    assert cp.config.objective == "linear" and cp.probe.out_features == 3
    with pytest.raises(ValueError, match="contrastive"):
        CircuitProbe(CircuitProbeConfig("mlp_update_1", cfg.circuit_config,
                                        cp_cfg.resid_config, loss="snn"), _bert())
    # the core config reads back NeuroSurgeon's name too
    assert CoreSubnetworkProbeConfig(probe_vectors="attn_update_0", n_classes=2).probe_vectors == (
        "attn_update_0")


def test_item2_residual_config_positional_in_documented_order():
    cfg = ResidualUpdateModelConfig("bert", [0, 1], True, True)
    assert (cfg.mlp, cfg.attn, cfg.updates, cfg.stream) == (True, True, True, False)
    rum = ResidualUpdateModel(cfg, _bert())
    rum(input_ids=_IDS)
    assert sorted(rum.vector_cache) == ["attn_update_0", "attn_update_1", "mlp_update_0",
                                        "mlp_update_1"]
    only_mlp = ResidualUpdateModel(ResidualUpdateModelConfig("bert", [0], True, False), _bert())
    only_mlp(input_ids=_IDS)
    assert sorted(only_mlp.vector_cache) == ["mlp_update_0"]


def test_item3_empty_target_layers_mean_no_masks():
    assert CoreCircuitConfig().target_layers == [] and CircuitConfig().target_layers == []
    net = _net()
    x = torch.randn(3, 4)
    expected = net(x)
    for circuit in (CoreCircuitModel(CoreCircuitConfig(), net), CircuitModel(CircuitConfig(), _net())):
        assert mm.masked_modules(circuit.wrapped_model) == {}
        assert not any(p.requires_grad for p in circuit.parameters())  # freeze_base
        assert torch.equal(circuit(x), expected)
        assert circuit.compute_l0_statistics()["max_l0"] == 0
    cfg = CircuitConfig()
    cfg.target_layers = ["0"]  # filled in later, as NeuroSurgeon's tests do
    assert list(mm.masked_modules(CircuitModel(cfg, _net()).wrapped_model)) == ["0"]


def test_item4_replacing_a_mask_parameter_reaches_the_eval_cache_core():
    net = mm.convert(_net(), ("continuous_sparsification",
                              {"nn.Linear": {"mask_init_value": 1.0}})).eval()
    x = torch.randn(3, 4)
    with torch.no_grad():
        before = net(x)
        net[0].weight_mask.logits = nn.Parameter(torch.full((8, 4), -1.0))  # all masked
        after = net(x)
    assert not torch.equal(before, after)


def test_item4_replacing_weight_mask_params_is_seen_by_the_eval_forward():
    layer = ContSparseLinear(4, 3, mask_init_value=1.0)
    layer.train(False)
    x = torch.ones(4)
    with torch.no_grad():
        full = layer(x)
        layer.weight_mask_params = nn.Parameter(torch.full((3, 4), -1.0))
        cut = layer(x)
    assert not torch.equal(full, cut) and torch.equal(cut, layer.bias)
    assert layer.weight_mask.logits is layer.weight_mask_params  # one parameter, two names
    with pytest.raises(ValueError, match="shape"):
        layer.weight_mask_params = nn.Parameter(torch.zeros(2, 2))


def test_item5_circuit_temperature_is_for_continuous_sparsification_only():
    hc = CircuitModel(CircuitConfig(mask_method="hard_concrete", target_layers=["0"]), _net())
    with pytest.warns(UserWarning, match="continuous sparsification"):
        hc.temperature = 10.0
    assert hc.wrapped_model[0].weight_mask.temperature == pytest.approx(2 / 3)  # left at beta
    cs = CircuitModel(CircuitConfig(target_layers=["0", "2"]), _net())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cs.temperature = 10.0
    assert cs.temperature == 10.0
    assert [m.weight_mask.temperature for m in mm.masked_modules(cs.wrapped_model).values()] == [
        10.0, 10.0]


def test_item6_documented_layer_properties():
    layer = ContSparseLinear(4, 3, mask_bias=True, mask_unit="neuron", mask_init_value=0.5)
    assert (layer.mask_bias, layer.mask_unit, layer.mask_init_value) == (True, "neuron", 0.5)
    soft = layer._compute_mask("weight_mask_params")
    layer.temperature = 50
    assert layer.weight_mask.temperature == 50 and layer.bias_mask.temperature == 50
    sharper = layer._compute_mask("weight_mask_params")
    assert bool((sharper > soft).all())  # sigmoid(50 * 0.5) > sigmoid(0.5): not a no-op
    assert layer.calculate_max_l0() == 12 + 3
    layer.train(False)
    layer.ablation = "randomly_sampled"
    assert layer.ablation == "randomly_sampled"
    with pytest.raises(ValueError, match="ablation"):
        layer.ablation = "zero"
    layer.ablation = "none"
    assert float(layer.calculate_l0()) == 15.0
    hc = HardConcreteLinear(4, 3, mask_init_percentage=0.7)
    assert hc.mask_init_percentage == 0.7 and hc.temperature == pytest.approx(2 / 3)
    mp = MagPruneLinear(10, 10, prune_percentage=0.3)
    mp.train(False)
    mp(torch.ones(10))
    assert int(mp.weight_mask.sum()) == 70
    mp.prune_percentage = 0.6  # settable: re-prunes
    mp(torch.ones(10))
    assert mp.prune_percentage == 0.6 and int(mp.weight_mask.sum()) == 40
    mp.ablation = "randomly_sampled"
    mp(torch.ones(10))
    first = mp.weight_mask.bool().clone()
    mp(torch.ones(10))
    assert torch.equal(first, mp.weight_mask.bool())  # drawn once
    torch.manual_seed(1)
    mp.force_resample = True
    mp(torch.ones(10))
    assert not torch.equal(first, mp.weight_mask.bool())  # redrawn once asked


def test_item7_new_circuit_model_trains_whatever_the_model_state():
    for freeze in (True, False):
        net = _net().eval()
        circuit = CoreCircuitModel(CoreCircuitConfig(target_layers=["0"], freeze_base=freeze,
                                                     mask_hparams={"mask_init_value": 0.5}), net)
        assert circuit.training
        circuit(torch.randn(3, 4)).sum().backward()  # raised with eval (hard) frozen masks
        assert net[0].weight_mask.logits.grad is not None
        assert (net[0].weight.grad is not None) == (not freeze)


def test_item8_neurosurgeon_label_layouts():
    seq = SubnetworkProbe(_probe_config(), _bert())
    out = seq(input_ids=_IDS, labels=torch.tensor([[1], [0]]), token_mask=_FIRST)
    assert out.labels.tolist() == [1, 0]
    tok = SubnetworkProbe(_probe_config(labeling="token"), _bert())
    mask = torch.tensor([[0, 1, 1, 1, 0], [0, 1, 1, 0, 0]]).bool()
    padded = torch.tensor([[1, 0, 1], [0, 1, -1]])  # NeuroSurgeon: rows padded with -1
    out = tok(input_ids=_IDS, labels=padded, token_mask=mask)
    assert out.labels.tolist() == [1, 0, 1, 0, 1] and out.hidden_states.shape == (5, 16)
    core = CoreSubnetworkProbe(tok.config, _bert())  # the same layout through the core probe
    assert core(input_ids=_IDS, labels=padded, token_mask=mask).labels.tolist() == [1, 0, 1, 0, 1]
    full = torch.ones(2, 5, dtype=torch.long)  # [batch, seq] labels, 10 of them, mask picks 5
    with pytest.raises(ValueError, match="outside token_mask"):
        core(input_ids=_IDS, labels=full, token_mask=mask)


def test_item9_l0_counts_gated_weights_in_the_neurosurgeon_interface():
    layer = ContSparseLinear.from_layer(nn.Linear(10, 20), mask_unit="neuron", mask_init_value=1.0)
    layer.train(False)
    assert layer.calculate_max_l0() == 200 and float(layer.calculate_l0()) == 200.0
    layer.train(True)  # expected L0 in training: 200 * sigmoid(1)
    assert float(layer.calculate_l0()) == pytest.approx(200 * torch.sigmoid(torch.tensor(1.0)).item())
    net = nn.Sequential(nn.Linear(10, 20))
    core = mm.convert(net, ("continuous_sparsification",
                            {"nn.Linear": {"mask_unit": "neuron", "mask_init_value": 1.0}}))
    assert mm.l0_stats(core.eval())["max_l0"] == 20  # the library counts units
    circuit = CircuitModel(CircuitConfig(target_layers=["0"], mask_hparams={
        "mask_unit": "neuron", "mask_init_value": 1.0}), nn.Sequential(nn.Linear(10, 20)))
    assert circuit.compute_l0_statistics()["max_l0"] == 200
    term = circuit.l0_term()
    assert float(term) == pytest.approx(1e-8 * 200 * torch.sigmoid(torch.tensor(1.0)).item())


def test_item10_mask_bias_without_a_bias():
    with pytest.raises(ValueError, match="no bias"):
        ContSparseLinear(4, 3, bias=False, mask_bias=True)
    with pytest.warns(UserWarning, match="no bias"):
        layer = ContSparseLinear.from_layer(nn.Linear(4, 3, bias=False), mask_bias=True)
    assert layer.bias_mask is None and not hasattr(layer, "bias_mask_params")


def test_item11_hard_concrete_init_percentage_is_clipped():
    ones = HardConcreteLinear(10, 10, mask_init_percentage=1.0)
    zeros = HardConcreteLinear(10, 10, mask_init_percentage=0.0)
    assert ones.mask_init_percentage == pytest.approx(1 - 1e-4)
    assert zeros.mask_init_percentage == pytest.approx(1e-4)
    ones.train(False)
    zeros.train(False)
    ones(torch.ones(10))
    zeros(torch.ones(10))
    assert bool((ones.weight_mask == 1).all()) and bool((zeros.weight_mask == 0).all())
    with pytest.raises(ValueError, match="outside"):
        HardConcreteLinear(4, 4, mask_init_percentage=1.5)


def test_item12_magnitude_default_prune_percentage_is_neurosurgeons():
    layer = MagPruneLinear(10, 10)
    assert layer.prune_percentage == 0.2 and int(layer.weight_mask.keep.sum()) == 80
    circuit = CircuitModel(CircuitConfig(mask_method="magnitude_pruning", target_layers=["0"]),
                           _net())
    assert int(circuit.wrapped_model[0].weight_mask.keep.sum()) == 32 - round(0.2 * 32)
    core = mm.convert(nn.Sequential(nn.Linear(10, 10)), "magnitude_pruning")
    assert int(core[0].weight_mask.keep.sum()) == 50  # the library's own default is unchanged


def test_item13_probes_take_ablation_and_scope_like_circuit_config():
    hparams = {"ablation": "zero_ablate", "scope": "global", "prune_percentage": 0.5}
    cfg = CoreSubnetworkProbeConfig(probe_vector="mlp_stream_1", n_classes=2,
                                    mask_method="magnitude_pruning", mask_hparams=hparams,
                                    target_layers=["encoder.layer.1.*.dense"])
    assert CoreCircuitConfig(mask_method="magnitude_pruning", mask_hparams=hparams).ablation == (
        "zero_ablate")
    probe = CoreSubnetworkProbe(cfg, _bert())
    layers = mm.masked_modules(probe.model)
    assert layers and {m.ablation for m in layers.values()} == {"zero_ablate"}
    with pytest.raises(ValueError, match="valid keys"):  # rejected at config time, as CircuitConfig
        CoreSubnetworkProbeConfig(probe_vector="mlp_stream_1", n_classes=2,
                                  mask_hparams={"prune_percentage": 0.5})
    with pytest.raises(ValueError, match="choose one of"):
        CoreSubnetworkProbeConfig(probe_vector="mlp_stream_1", n_classes=2, mask_method="gradnas")


def test_item14_return_dict_false_gives_a_tuple():
    probe = SubnetworkProbe(_probe_config(), _bert())
    labels = torch.tensor([1, 0])
    loss, vectors = probe(input_ids=_IDS, labels=labels, token_mask=_FIRST, return_dict=False)
    assert loss.dim() == 0 and vectors.shape == (2, 16)
    assert probe(input_ids=_IDS, token_mask=_FIRST, return_dict=False).shape == (2, 16)
    core = CoreSubnetworkProbe(probe.config, _bert())
    out = core(input_ids=_IDS, labels=labels, token_mask=_FIRST, return_dict=False)
    assert isinstance(out, tuple) and out[0].dim() == 0 and out[1].shape == (2, 2)


def test_item15_circuit_config_serialises_like_a_pretrained_config(tmp_path):
    cfg = CircuitConfig(mask_method="hard_concrete", target_layers=["0"], l0_lambda=1e-4)
    assert isinstance(cfg, transformers.PretrainedConfig)
    assert json.loads(cfg.to_json_string())["l0_lambda"] == 1e-4
    cfg.save_pretrained(tmp_path / "ns")
    loaded = CircuitConfig.from_pretrained(tmp_path / "ns")
    assert (loaded.mask_method, loaded.target_layers) == ("hard_concrete", ["0"])
    core = CoreCircuitConfig(mask_method="hard_concrete", target_layers=["0"], l0_lambda=1e-4)
    assert core.to_dict()["target_layers"] == ["0"]
    core.save_pretrained(tmp_path / "core")
    assert CoreCircuitConfig.from_pretrained(tmp_path / "core") == core


def _encoder(name: str, **extra):
    cfg = getattr(transformers, f"{name}Config")(**{**_SMALL, **extra})
    torch.manual_seed(0)
    return getattr(transformers, f"{name}Model")(cfg).eval()


@pytest.mark.parametrize("ns_type, build", [
    ("bert", lambda: _encoder("Bert")),
    ("bert", lambda: _encoder("Roberta")),
    ("bert", lambda: _encoder("MPNet")),
    ("bert", lambda: _encoder("ConvBert", embedding_size=16)),
    ("bert", lambda: _encoder("Ernie")),
    ("bert", lambda: _encoder("Electra", embedding_size=16)),
    ("gpt", lambda: transformers.GPT2Model(transformers.GPT2Config(
        n_embd=16, n_layer=2, n_head=2, vocab_size=40, n_positions=32)).eval()),
    ("gptneox", lambda: _encoder("GPTNeoX")),
    ("vit", lambda: transformers.ViTModel(transformers.ViTConfig(
        hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
        image_size=8, patch_size=4)).eval()),
])
def test_item16_documented_model_types_and_architectures(ns_type, build):
    model = build()
    rum = ResidualUpdateModel(ResidualUpdateModelConfig(ns_type, [1], True, True, stream=True),
                              model)
    inputs = {"pixel_values": torch.randn(1, 3, 8, 8)} if ns_type == "vit" else {"input_ids": _IDS}
    out = rum(**inputs, output_hidden_states=True)
    cache = rum.vector_cache
    assert sorted(cache) == ["attn_stream_1", "attn_update_1", "mlp_stream_1", "mlp_update_1"]
    before = out.hidden_states[1]  # the stream entering layer 1
    # the updates add up to the streams (post-LN encoders normalise after adding)
    if ns_type in ("gpt", "vit"):
        torch.testing.assert_close(before + cache["attn_update_1"], cache["attn_stream_1"])
        torch.testing.assert_close(cache["attn_stream_1"] + cache["mlp_update_1"],
                                   cache["mlp_stream_1"])
    if ns_type == "bert":
        torch.testing.assert_close(cache["mlp_stream_1"], out.last_hidden_state)


def test_compat_models_copy_save_and_export_like_library_models(tmp_path):
    import copy

    net = _net()
    circuit = CircuitModel(CircuitConfig(target_layers=["0"], mask_hparams={"mask_init_value": 0.5}),
                           net)
    with torch.no_grad():
        circuit.wrapped_model[0].weight_mask_params.uniform_(-1, 1)
    twin = copy.deepcopy(circuit)
    layer = twin.wrapped_model[0]
    assert type(layer).__name__ == "ContSparseLinear"
    assert layer.weight_mask_params is layer.weight_mask.logits  # the alias survives the copy
    x = torch.randn(3, 4)
    circuit.eval()
    twin.eval()
    assert torch.equal(circuit(x), twin(x))
    mm.save(circuit.wrapped_model, tmp_path)
    restored = mm.restore(_net(), tmp_path).eval()  # a library model from a NeuroSurgeon one
    assert torch.equal(restored(x), circuit(x))
    exported = mm.export(twin.wrapped_model)
    assert type(exported[0]) is nn.Linear and "weight_mask_params" not in dict(
        exported.named_parameters())
    assert torch.equal(exported(x), circuit(x))
