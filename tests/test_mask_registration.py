"""A mask technique is one file: a rule, a technique with ``from_rule``, one registration call.

The lists of modes and fields here are read from the registry, so a new technique
registered with ``register_mask_mode`` is checked without editing this file.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from conftest import MASK_MODES

import modeopt_masks as mm
from modeopt_masks.modes.mask_mode import MaskModeConfig, MaskRule, register_mask_mode


class SignMask(mm.MaskTechnique):
    """Keeps the entries whose weight is positive at convert time (a fixed mask)."""

    learnable = False

    def __init__(self, keep: torch.Tensor) -> None:
        super().__init__(tuple(keep.shape))
        self.register_buffer("keep", keep)

    @classmethod
    def from_rule(cls, kind, tensor, shape, rule):
        scores = tensor.detach() if shape == tuple(tensor.shape) else kind.unit_scores(tensor)
        return cls((scores > rule.threshold).reshape(shape))

    def mask(self):
        return self.keep.float()

    def circuit(self):
        return self.keep

    def l0(self):
        return self.keep.sum().float()


class SignRule(MaskRule):
    threshold: float = 0.0


seen_hooks: list[tuple[list[str], bool]] = []

SIGN = register_mask_mode(
    "test_sign_mask", SignRule, SignMask,
    options={"verbose": (bool, False)},
    after_convert=lambda layers, config: seen_hooks.append((list(layers), config.verbose)),
)


def test_mask_modes_come_from_the_registry():
    assert {"continuous_sparsification", "hard_concrete", "magnitude_pruning"} <= set(MASK_MODES)
    for name in MASK_MODES:
        desc = mm.get_mode(name)
        config = desc.config_class
        assert issubclass(config, MaskModeConfig) and issubclass(config.rule_class, MaskRule)
        assert desc.config_class.__name__.endswith("Config") and desc.name == name
        assert {"mask_unit", "mask_bias"} <= set(config.rule_class.model_fields)
        assert "freeze_base" in config.option_names()


@pytest.mark.parametrize("mode", MASK_MODES)
def test_every_rule_field_reaches_the_technique(mode):
    """Each rule field given in a config lands on the converted layer's technique rule."""
    desc = mm.get_mode(mode)
    defaults = desc.config_class.rule_class()
    fields = {k: v for k, v in defaults.model_dump().items() if k not in ("mask_unit", "mask_bias")}
    net = mm.convert(nn.Sequential(nn.Linear(4, 4)), (mode, {"nn.Linear": fields}))
    tech = net[0].weight_mask
    assert isinstance(tech, desc.technique_class)
    assert tech.rule.model_dump() == defaults.model_dump()


def test_one_registration_call_makes_a_full_mode(tmp_path):
    assert SIGN.config_class.__name__ == "TestSignMaskConfig"
    assert SIGN.config_class.option_names() == ["freeze_base", "verbose"]
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3)).eval()
    x = torch.randn(2, 5)
    seen_hooks.clear()
    net = mm.convert(net, ("test_sign_mask", {"verbose": True, "nn.Linear": {"threshold": 0.1}}))
    assert seen_hooks == [(["0", "2"], True)]
    for layer in (net[0], net[2]):
        assert torch.equal(layer.effective_weight(), layer.weight * (layer.weight > 0.1))
    with torch.no_grad():
        masked = net(x)
    mm.save(net, tmp_path / "ckpt")
    fresh = mm.restore(nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3)), tmp_path / "ckpt")
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x), masked)
        exported = mm.export(net)
        assert type(exported[0]) is nn.Linear
        assert torch.equal(exported(x), masked)


def test_unknown_option_of_a_registered_mode_names_the_valid_ones():
    with pytest.raises(ValueError, match="verbose"):
        mm.convert(nn.Sequential(nn.Linear(2, 2)), ("test_sign_mask", {"verbos": True}))


def test_registering_a_mode_name_twice_is_refused():
    with pytest.raises(ValueError, match="already registered"):
        register_mask_mode("hard_concrete", SignRule, SignMask)
    assert mm.get_mode("hard_concrete").technique_class.__name__ == "HardConcreteMask"
