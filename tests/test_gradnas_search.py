"""gradnas search: lands on params/FLOPs targets, scale-free, keeps the top-scoring units."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import modeopt_masks as mm
from modeopt_masks.pruning import prune
from modeopt_masks.searchers import count_params, measure_flops
from modeopt_masks.structured import collect_scores, gradnas_hparams

try:
    from .gradnas_helpers import loader, loss_of, make_input, make_model
except ImportError:  # tests/ is not a package
    from gradnas_helpers import loader, loss_of, make_input, make_model


def _bert_prune(target, scale=1.0, **extra):
    return prune(make_model("bert"), "gradnas", constraints={"params": target},
                 config={"data_loader": loader("bert"), "loss_func": loss_of(scale),
                         "progress": False, **extra})


@pytest.mark.parametrize("target", [0.7, 0.5])
def test_search_lands_within_one_percent_and_is_loss_scale_free(target):
    selections = []
    for scale in (1e-3, 1.0, 1e3):
        model, result = _bert_prune(f"{100 * target:g}%", scale=scale)
        ratio = result.constraints["params"]["ratio"]
        assert target - 0.01 <= ratio <= target, ratio
        assert count_params(mm.export(model)) == result.constraints["params"]["achieved"]
        selections.append(result.kept)
    assert selections[0] == selections[1] == selections[2]


def test_absolute_params_constraint_and_history():
    full = count_params(make_model("bert"))
    model, result = _bert_prune(int(0.6 * full))
    assert 0.59 * full <= result.constraints["params"]["achieved"] <= 0.6 * full
    assert len(result.history) <= 20 and result.history[-1]["params"] > 0
    assert result.searcher == "gradient_binary"


def _hand_model():
    net = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 1))
    with torch.no_grad():
        net[0].weight.copy_(torch.eye(4))
        net[0].bias.zero_()
        net[2].weight.copy_(torch.tensor([[0.5, -3.0, 1.0, 2.0]]))
        net[2].bias.zero_()
    return net


def test_kept_units_are_the_top_scoring_ones_hand_computed():
    # out = sum_u c_u * m_u * relu(x_u); with x = 1: dL/dm_u = c_u, score_u = 2 batches * c_u^2
    data = [torch.ones(1, 4), torch.ones(1, 4)]
    net, result = prune(_hand_model(), ("gradnas", {"nn.Linear": {"ratios": [0.5, 1.0]}}),
                        constraints={"params": 13},  # 25 params, 6 per unit -> keep 2
                        config={"data_loader": data, "loss_func": lambda out, b: out.sum(),
                                "progress": False})
    assert result.scores["0"] == [0.5, 18.0, 2.0, 8.0]
    assert result.kept == {"0": [1, 3]}
    net = mm.export(net)
    assert torch.equal(net[2].weight, torch.tensor([[-3.0, 2.0]]))
    assert torch.equal(net[0].weight, torch.eye(4)[[1, 3]])


def test_michel_score_is_mean_absolute_gradient():
    net = mm.convert(_hand_model(), "gradnas")
    data = [torch.ones(1, 4), 2 * torch.ones(1, 4)]
    scores = collect_scores(net, data, loss_func=lambda out, b: out.sum(), score_type="michel",
                            progress=False)
    assert torch.allclose(scores["0"], torch.tensor([0.75, 4.5, 1.5, 3.0], dtype=torch.float64))


def test_unreachable_constraint_names_smallest_value_and_leaves_model_unchanged():
    model = make_model("bert")
    with pytest.raises(ValueError, match=r"smallest reachable params .* is \d+"):
        prune(model, "gradnas", constraints={"params": "5%"},
              config={"data_loader": loader("bert"), "loss_func": loss_of(), "progress": False})
    assert mm.mode_history(model) == [] and not gradnas_hparams(model)
    assert type(model.encoder.layer[0].output.dense) is nn.Linear


def test_bad_config_keys_and_constraints_are_clear_errors():
    with pytest.raises(ValueError, match="valid kinds"):
        prune(make_model("bert"), "gradnas", constraints={"latency": 1.0},
              config={"data_loader": loader("bert")})
    with pytest.raises(ValueError, match="data_loadr.*data_loader"):
        prune(make_model("bert"), "gradnas", constraints={"params": "70%"},
              config={"data_loadr": []})
    with pytest.raises(ValueError, match="percentage"):
        _bert_prune("70")


def test_flops_constraint_matches_measured_flops_of_exported_model():
    model = make_model("plain_conv")
    x = make_input("plain_conv")
    full, _ = measure_flops(model, x)
    model, result = prune(model, "gradnas", constraints={"flops": "50%"}, dummy_input=x,
                          config={"data_loader": [make_input("plain_conv", seed=s)
                                                  for s in range(2)],
                                  "loss_func": loss_of(), "progress": False})
    achieved = result.constraints["flops"]["achieved"]
    assert 0.45 * full <= achieved <= 0.5 * full
    exported, _ = measure_flops(mm.export(model), x)
    assert exported == pytest.approx(achieved, rel=1e-9)


def test_flops_constraint_on_bert_counts_attention():
    model = make_model("bert")
    x = make_input("bert")
    model, result = prune(model, "gradnas", constraints={"flops": "60%", "params": "90%"},
                          dummy_input=x, config={"data_loader": loader("bert"),
                                                 "loss_func": loss_of(), "progress": False})
    c = result.constraints
    assert c["flops"]["ratio"] <= 0.6 and c["params"]["ratio"] <= 0.9
    exported, _ = measure_flops(mm.export(model), x)
    assert exported == pytest.approx(c["flops"]["achieved"], rel=1e-6)


def test_binary_searcher_uses_score_func():
    torch.manual_seed(0)
    model = make_model("plain_mlp")
    x = make_input("plain_mlp", batch=32)
    with torch.no_grad():
        y = model(**x)
    calls = []

    def score(m):
        calls.append(1)
        return -float((m(**x) - y).pow(2).mean())

    model, result = prune(model, ("gradnas", {"nn.Linear": {"ratios": [0.25, 0.5, 0.75, 1.0]}}),
                          constraints={"params": "70%"}, searcher="binary",
                          config={"score_func": score})
    assert result.searcher == "binary" and len(calls) == 1 + 3 + 3
    assert result.constraints["params"]["ratio"] <= 0.7
    assert all(s >= 0 for v in result.sensitivities.values() for s in v[-1:])


def test_iterative_search_rescores_and_keeps_earlier_prunes():
    model, result = _bert_prune("60%", iterations=3)
    ratio = result.constraints["params"]["ratio"]
    assert 0.59 <= ratio <= 0.60, ratio
    assert result.constraints["params"]["target"] == pytest.approx(0.6 * count_params(make_model("bert")))
    assert {h["iteration"] for h in result.history} == {1.0, 2.0, 3.0}
    for hp in gradnas_hparams(model).values():  # the kept units are the last step's top ones
        assert hp.importance is not None
        assert set(hp.kept) == set(hp.top(hp.active))
    assert count_params(mm.export(model)) == result.constraints["params"]["achieved"]
    with pytest.raises(ValueError, match="iterations must be a positive integer"):
        _bert_prune("60%", iterations=0)
    with pytest.raises(ValueError, match="smallest reachable"):
        _bert_prune("1%", iterations=3)


def test_a_loss_minimised_by_the_full_model_warns_that_scores_are_noise():
    model = mm.convert(make_model("bert"), "gradnas")
    with torch.no_grad():
        refs = [model(**b).last_hidden_state for b in loader("bert")]
    data = [(b, r) for b, r in zip(loader("bert"), refs, strict=True)]
    with pytest.warns(UserWarning, match="loss is ~0 on every batch"):
        collect_scores(model, data, collect_func=lambda pair: pair[0], progress=False,
                       loss_func=lambda out, pair: (out.last_hidden_state - pair[1]).pow(2).mean())
