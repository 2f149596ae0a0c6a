"""Rule-config language: glob override semantics and validation errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from pydantic import ValidationError

import modeopt_masks as mm

HC = mm.get_mode("hard_concrete").config_class


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.Linear(4, 4)
        self.mlp = nn.Linear(4, 4)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([Block(), Block()])
        self.lm_head = nn.Linear(4, 3)
        self.conv = nn.Conv1d(2, 2, 1)


def snapshot(model):
    return ({n: type(m) for n, m in model.named_modules()},
            {n: p.detach().clone() for n, p in model.named_parameters()})


def test_later_pattern_overrides_only_the_fields_it_sets():
    cfg = HC.model_validate({"nn.Linear": {
        "*": {"mask_init_percentage": 0.9, "mask_unit": "neuron"},
        "*.mlp": {"mask_bias": True},
        "blocks.1.*": {"mask_init_percentage": 0.2},
    }})
    r = cfg.rule_for("nn.Linear", "blocks.0.mlp")
    assert (r.mask_init_percentage, r.mask_unit, r.mask_bias) == (0.9, "neuron", True)
    r = cfg.rule_for("nn.Linear", "blocks.1.mlp")
    assert (r.mask_init_percentage, r.mask_unit, r.mask_bias) == (0.2, "neuron", True)
    r = cfg.rule_for("nn.Linear", "blocks.1.attn")
    assert (r.mask_init_percentage, r.mask_unit, r.mask_bias) == (0.2, "neuron", False)


def test_none_switches_off_and_a_later_rule_switches_back_on():
    cfg = HC.model_validate({"nn.Linear": {"*": {"mask_init_percentage": 0.7},
                                           "blocks.*": None, "*.mlp": {"mask_bias": True}}})
    assert cfg.rule_for("nn.Linear", "blocks.0.attn") is None
    r = cfg.rule_for("nn.Linear", "blocks.0.mlp")
    assert r.mask_bias and r.mask_init_percentage == 0.7
    assert cfg.rule_for("nn.Linear", "lm_head") is None  # a default exclusion survives "*"


def test_globs_match_full_dotted_names_and_star_crosses_dots():
    net = Net()
    net = mm.convert(net, ("hard_concrete", {"nn.Linear": {"*lm_head*": {}, "blocks.*.mlp": {}},
                                             "nn.Conv1d": None}))
    assert sorted(mm.masked_modules(net)) == ["blocks.0.mlp", "blocks.1.mlp", "lm_head"]


def test_defaults_leave_output_heads_off_and_user_can_turn_them_on():
    net = mm.convert(Net(), "continuous_sparsification")
    assert "lm_head" not in mm.masked_modules(net)
    assert "conv" in mm.masked_modules(net)
    # a user rule for "*" keeps the default exclusions (the trap of issue 14) ...
    net = mm.convert(Net(), ("continuous_sparsification", {"nn.Linear": {"*": {}}}))
    assert "lm_head" not in mm.masked_modules(net) and "blocks.0.mlp" in mm.masked_modules(net)
    # ... and a glob that names the head converts it, with the "*" rule's fields merged in
    net = mm.convert(Net(), ("magnitude_pruning", {"nn.Linear": {
        "*": {"prune_percentage": 0.25}, "*lm_head*": {}}}))
    stats = mm.l0_stats(net.eval())
    assert stats["layer2l0"]["lm_head"] == 0.75 * stats["layer2maxl0"]["lm_head"]


@pytest.mark.parametrize(
    ("config", "fragment"),
    [
        ({"nn.Linear": {"mask_unti": "neuron"}}, "valid fields"),
        ({"nn.Linear": {"*": {"mask_init_percentag": 0.5}}}, "mask_init_percentage"),
        ({"nn.Linaer": {}}, "valid type keys"),
        ({"nn.Linear": {"mask_init_percentage": 0}}, "greater than 0"),
        ({"nn.Linear": {"mask_unit": "row"}}, "'weight', 'neuron', 'head' or 'kv_group'"),
        ({"freeze_bsae": True}, "valid options"),
    ],
)
def test_bad_configs_raise_naming_valid_choices_and_leave_model(config, fragment):
    net = Net()
    before = snapshot(net)
    with pytest.raises((ValidationError, ValueError), match=fragment):
        mm.convert(net, ("hard_concrete", config))
    after = snapshot(net)
    assert before[0] == after[0]
    assert all(torch.equal(before[1][k], after[1][k]) for k in before[1])
    assert mm.mode_history(net) == []


def test_out_of_range_prune_percentage():
    with pytest.raises(ValidationError, match="less than or equal to 1"):
        mm.convert(Net(), ("magnitude_pruning", {"nn.Linear": {"prune_percentage": 1.5}}))


def test_a_rule_that_matches_nothing_names_the_closest_modules():
    net = Net()
    with pytest.raises(ValueError, match=r"closest nn.Linear modules: 'blocks.[01].mlp', 'blocks.[01].mlp'") as info:
        mm.convert(net, ("magnitude_pruning", {"nn.Linear": {"blocks.*.mpl": {}}}))
    assert "blocks.*.mpl" in str(info.value) and "\n" not in str(info.value)
    assert mm.masked_modules(net) == {}


def test_unknown_mode_lists_registered_modes():
    with pytest.raises(ValueError, match="continuous_sparsification"):
        mm.convert(Net(), "continous_sparsification")


def test_config_round_trips_through_to_dict():
    raw = {"freeze_base": True, "nn.Linear": {"*": {"mask_init_percentage": 0.9},
                                              "*.mlp": None, "blocks.1.mlp": {"mask_bias": True}}}
    cfg = HC.model_validate(raw)
    again = HC.model_validate(cfg.to_dict())
    assert again.to_dict() == cfg.to_dict()
    for name in ("blocks.0.attn", "blocks.0.mlp", "blocks.1.mlp", "lm_head"):
        assert again.rule_for("nn.Linear", name) == cfg.rule_for("nn.Linear", name)
    assert again.freeze_base


def test_a_failing_second_mode_in_a_list_undoes_the_first():
    net = Net()
    with pytest.raises(ValueError, match="may not follow"):
        mm.convert(net, ["magnitude_pruning", "hard_concrete"])
    assert mm.masked_modules(net) == {} and mm.mode_history(net) == []
    assert type(net.blocks[0].attn) is nn.Linear
