"""target_layers resolve the same way for CircuitModel and the probes."""

from __future__ import annotations

import pytest
import torch.nn as nn

from modeopt_masks.circuit import CircuitConfig, CircuitModel
from modeopt_masks.probing.mask_plan import mask_mode_spec
from modeopt_masks.targets import resolve_targets


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(4, 4), nn.Conv1d(4, 4, 1))
        self.embed = nn.Embedding(5, 4)
        self.classifier = nn.Linear(4, 2)


def test_globs_group_by_type_key_and_include_heads_they_cover():
    assert resolve_targets(_Net(), ["encoder.*", "*classifier"]) == {
        "nn.Linear": ["encoder.*", "*classifier"], "nn.Conv1d": ["encoder.*"],
    }


def test_every_bad_target_is_named_and_both_interfaces_raise_the_same_error():
    net = _Net()
    bad = ["encoder.O", "embed", "classifier.weight"]
    with pytest.raises(ValueError) as resolved:
        resolve_targets(net, ["encoder.0", *bad])
    message = str(resolved.value)
    assert "target 'encoder.O' matches no module" in message and "'encoder.0'" in message
    assert "target 'embed' matches only unsupported layers [('embed', 'Embedding')]" in message
    assert "drop '.weight'" in message
    with pytest.raises(ValueError) as probe:
        mask_mode_spec(net, "hard_concrete", ["encoder.0", *bad], {}, True)
    with pytest.raises(ValueError) as circuit:
        CircuitModel(CircuitConfig(target_layers=["encoder.0", *bad]), net)
    assert str(probe.value) == str(circuit.value) == message
    assert not any(type(m).__name__.startswith("Masked") for m in net.modules())


def test_probe_and_circuit_build_the_same_layer_rules():
    net = _Net()
    cfg = CircuitConfig(mask_method="hard_concrete", target_layers=["encoder.*"],
                        mask_hparams={"mask_init_percentage": 0.8})
    _, spec = mask_mode_spec(net, "hard_concrete", ["encoder.*"], {"mask_init_percentage": 0.8},
                             True)
    assert cfg.mode_config(resolve_targets(net, ["encoder.*"])) == spec
