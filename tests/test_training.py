"""Mask-training helpers: schedules, the density controller, the HF Trainer callback."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from conftest import tiny_bert

import modeopt_masks as mm
from modeopt_masks.circuit import CircuitConfig, CircuitModel
from modeopt_masks.training import (
    DensityController,
    ExponentialSchedule,
    expected_density,
    hard_density,
)


def test_exponential_schedule():
    s = ExponentialSchedule(initial=2.0, final=200.0, total=4)
    assert s(0) == 2.0 and s(4) == pytest.approx(200.0) and s(10) == pytest.approx(200.0)
    assert s(2) == pytest.approx(20.0)  # geometric midpoint
    ratios = [s(t + 1) / s(t) for t in range(4)]
    assert ratios == pytest.approx([100 ** 0.25] * 4)  # constant factor per step/epoch
    net = mm.convert(nn.Sequential(nn.Linear(3, 3)), "continuous_sparsification")
    assert s.apply(net, 2) == pytest.approx(20.0) and mm.get_temperature(net) == pytest.approx(20.0)
    with pytest.raises(ValueError):
        ExponentialSchedule(0.0, 1.0, 3)
    with pytest.raises(ValueError):
        ExponentialSchedule(1.0, 2.0, 0)


def _digits():
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return torch.tensor(x / 16.0, dtype=torch.float32), torch.tensor(y)


def _trained_mlp(x, y):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    for _ in range(150):
        loss = nn.functional.cross_entropy(net(x[:1400]), y[:1400])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net


@pytest.mark.parametrize("method,hparams", [
    ("hard_concrete", {"mask_init_percentage": 0.9}),
    ("continuous_sparsification", {"mask_init_value": 0.5}),
])
def test_density_controller_reaches_the_requested_density(method, hparams):
    x, y = _digits()
    net = _trained_mlp(x, y)
    mm.convert(net, (method, {"nn.Linear": hparams, "freeze_base": True}))
    net.train()
    target, steps = 0.05, 400
    ctrl = DensityController(target, warmup_steps=steps // 3)
    sched = ExponentialSchedule(1.0, 20.0, total=steps)
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], 0.1)
    gen = torch.Generator().manual_seed(0)
    for step in range(steps):
        if method == "continuous_sparsification":
            sched.apply(net, step)
        idx = torch.randint(0, 1400, (256,), generator=gen)
        loss = nn.functional.cross_entropy(net(x[idx]), y[idx]) + ctrl(net)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert ctrl.target() == target and int(ctrl.steps) == steps
    assert abs(ctrl.last_hard_density - target) < 0.02  # the eval circuit, measured in training
    net.eval()
    hard = float(expected_density(net))  # the hard circuit's kept fraction
    assert abs(hard - target) < 0.02, hard
    with torch.no_grad():
        acc = (net(x[1400:]).argmax(1) == y[1400:]).float().mean().item()
    assert acc > 0.35  # 5% of the weights still do the task (chance is 0.1)


def _cs_layer(logit: float) -> nn.Module:
    net = mm.convert(nn.Sequential(nn.Linear(4, 4)), "continuous_sparsification")
    with torch.no_grad():
        net[0].weight_mask.logits.fill_(logit)
    return net


def test_density_controller_pi_law_reset_and_errors():
    net = _cs_layer(0.1)  # hard density 1 (all s > 0), expected sigmoid(0.1)
    ctrl = DensityController(0.25, lr=2.0, gain=3.0, warmup_steps=0)
    p = ctrl(net)  # control c = lambda_1 (0) + gain * (1 - 0.25), then the integral ascends
    d = torch.sigmoid(torch.tensor(0.1)).item()
    assert float(p.detach()) == pytest.approx(3.0 * 0.75 * (d - 0.25), rel=1e-6)
    assert ctrl.lambda_1.item() == pytest.approx(2.0 * 0.75)  # lr * gap * (1 + |0|)
    p.backward()
    assert (net[0].weight_mask.logits.grad > 0).all()  # descending lowers the density
    ctrl(net)
    assert ctrl.lambda_1.item() == pytest.approx(1.5 + 2.0 * 0.75 * 2.5)  # geometric growth
    with torch.no_grad():  # no ascent without grad (evaluation)
        ctrl(net)
    assert ctrl.lambda_1.item() == pytest.approx(5.25)
    with torch.no_grad():
        net[0].weight_mask.logits.fill_(-0.1)  # hard density 0: the gap changes sign
    ctrl(net)
    assert ctrl.lambda_1.item() == pytest.approx(2.0 * -0.25)  # reset to 0 first (anti-wind-up)
    assert ctrl.last_hard_density == 0.0 and "lambda_1" in ctrl.state_dict()
    mp = mm.convert(nn.Sequential(nn.Linear(4, 4)), "magnitude_pruning")
    with pytest.raises(ValueError, match="nothing to control"):
        DensityController(0.1)(mp)
    for bad in ({"target_density": 1.5}, {"target_density": 0.1, "lr": 0.0},
                {"target_density": 0.1, "gain": float("nan")},
                {"target_density": 0.1, "warmup_steps": -1}):
        with pytest.raises(ValueError):
            DensityController(**bad)


def test_integral_term_is_bounded_when_the_masks_cannot_move():
    net = _cs_layer(0.1)
    ctrl = DensityController(0.0, lr=10.0, warmup_steps=0)
    for _ in range(400):  # no optimiser step: the gap never closes
        penalty = ctrl(net)
    assert ctrl.lambda_1.item() == mm.training.LAMBDA_LIMIT
    assert torch.isfinite(penalty)


def test_hard_density_is_the_eval_circuit_fraction():
    net = mm.convert(nn.Sequential(nn.Linear(10, 10)), "hard_concrete")
    with torch.no_grad():
        net[0].weight_mask.log_alpha.fill_(-0.5)
        net[0].weight_mask.log_alpha[:3].fill_(0.5)
    net.train()
    assert float(hard_density(net)) == pytest.approx(0.3)
    assert float(expected_density(net)) > 0.5  # hard concrete's expected L0 counts log_alpha < 0
    net.eval()
    assert float(expected_density(net)) == pytest.approx(0.3)


def test_warmup_moves_the_target_linearly():
    net = _cs_layer(0.1)
    with torch.no_grad():
        net[0].weight_mask.logits[:2].fill_(-0.1)  # hard density 0.5
    ctrl = DensityController(0.1, warmup_steps=4)
    targets = []
    for _ in range(6):
        ctrl(net)
        targets.append(ctrl.target())
    assert targets == pytest.approx([0.4, 0.3, 0.2, 0.1, 0.1, 0.1])  # from 0.5 to 0.1
    assert DensityController(0.1).warmup_steps == 100  # the default warm-up


def test_circuit_model_uses_the_controller_instead_of_lambda():
    model, inputs = tiny_bert()
    inputs["labels"] = torch.tensor([0, 1])
    ctrl = DensityController(0.2, warmup_steps=0)
    circuit = CircuitModel(
        CircuitConfig(target_layers=["*.output.dense"], l0_lambda=1.0), model, ctrl
    ).train()
    assert "density_controller.lambda_1" in circuit.state_dict()
    ctrl.lambda_1.fill_(3.0)
    ctrl.last_gap.fill_(-1.0)  # the hard gap keeps its sign: no reset
    out = circuit(**inputs)
    task = circuit.wrapped_model(**inputs).loss
    hard = float(hard_density(circuit.wrapped_model))
    gap = expected_density(circuit.wrapped_model) - 0.2
    control = 3.0 + ctrl.gain * (hard - 0.2)
    assert out.loss.detach().item() == pytest.approx((task + control * gap).item(), rel=1e-5)
    # one (geometric) integral step per training forward
    assert ctrl.lambda_1.item() == pytest.approx(3.0 + (hard - 0.2) * 4.0)


class _Tokens(torch.utils.data.Dataset):
    def __init__(self, n=16):
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, 99, (n, 7), generator=g)
        self.labels = torch.randint(0, 3, (n,), generator=g)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


def _trainer(circuit, callback, tmp_path, **args):
    from transformers import Trainer, TrainingArguments

    targs = TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=4, learning_rate=0.05,
        report_to=[], save_strategy="no", use_cpu=True, disable_tqdm=True,
        logging_steps=2, dataloader_num_workers=0, **args,
    )
    return Trainer(model=circuit, args=targs, train_dataset=_Tokens(), callbacks=[callback])


def test_trainer_callback_anneals_per_step_and_logs(tmp_path):
    from transformers import TrainerCallback

    from modeopt_masks.training import MaskTrainingCallback

    model, _ = tiny_bert()
    circuit = CircuitModel(CircuitConfig(target_layers=["*.output.dense"],
                                         mask_hparams={"mask_init_value": 0.5}), model)
    sched = ExponentialSchedule(1.0, 50.0, total=6)
    cb = MaskTrainingCallback(sched, unit="step")
    assert isinstance(cb, TrainerCallback)
    logits_before = {n: p.clone() for n, p in circuit.named_parameters() if "weight_mask" in n}
    trainer = _trainer(circuit, cb, tmp_path, max_steps=6)
    trainer.train()
    assert cb.history == [(s, pytest.approx(sched(s))) for s in range(7)]
    assert circuit.temperature == pytest.approx(50.0)
    params = dict(circuit.named_parameters())
    assert any(not torch.equal(params[n], v) for n, v in logits_before.items())  # masks trained
    logged = [h for h in trainer.state.log_history if "mask_l0" in h]
    assert len(logged) >= 3  # logging_steps=2 over 6 steps, plus the final summary
    assert all(0 < h["mask_density"] <= 1 for h in logged)
    assert [h["mask_temperature"] for h in logged[:3]] == pytest.approx([sched(s) for s in (2, 4, 6)])


def test_trainer_callback_per_epoch_with_density_controller(tmp_path):
    from modeopt_masks.training import MaskTrainingCallback

    model, _ = tiny_bert()
    ctrl = DensityController(0.3)
    circuit = CircuitModel(CircuitConfig(mask_method="hard_concrete",
                                         target_layers=["*.output.dense"]), model, ctrl)
    sched = ExponentialSchedule(2 / 3, 0.1, total=3)
    cb = MaskTrainingCallback(sched, unit="epoch", density_controller=ctrl)
    trainer = _trainer(circuit, cb, tmp_path, num_train_epochs=3)
    trainer.train()
    assert [t for _, t in cb.history] == pytest.approx([sched(e) for e in range(4)])
    assert [s for s, _ in cb.history] == [0, 4, 8, 12]  # 16 examples / batch 4 per epoch
    assert circuit.temperature == pytest.approx(0.1)
    assert int(ctrl.steps) == 12 and ctrl.lambda_1.item() != 0.0
    logs = [h for h in trainer.state.log_history if "mask_l0" in h]
    assert logs and all("density_target" in h and "density_lambda_1" in h for h in logs)


def test_works_without_transformers():
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['transformers'] = None\n"
        "import torch.nn as nn, modeopt_masks as mm\n"
        "from modeopt_masks.training import DensityController, ExponentialSchedule\n"
        "from modeopt_masks.circuit import CircuitConfig, CircuitModel\n"
        "c = CircuitModel(CircuitConfig(target_layers=['0']), nn.Sequential(nn.Linear(2, 2)))\n"
        "ExponentialSchedule(1, 10, 5).apply(c, 5); print(c.temperature)\n"
        "import modeopt_masks.training as t\n"
        "try:\n    t.MaskTrainingCallback(ExponentialSchedule(1, 10, 5))\n"
        "except ImportError as e:\n    print('needs transformers' in str(e))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["10.0", "True"]


@pytest.mark.parametrize("target", [0.05, 0.2, 0.3])
@pytest.mark.parametrize("method,hparams", [
    ("hard_concrete", {"mask_init_percentage": 0.9}),
    ("continuous_sparsification", {"mask_init_value": 0.5}),
])
def test_density_controller_defaults_land_on_the_target(method, hparams, target):
    """The README's usage, with the controller's defaults (100 warm-up steps): no tuning."""
    x, y = _digits()
    model = mm.convert(_trained_mlp(x, y), (method, {"nn.Linear": {"*": hparams},
                                                     "freeze_base": True}))
    controller = mm.DensityController(target_density=target)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.1)
    gen = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(300):
        idx = torch.randint(0, 1400, (128,), generator=gen)
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx]) + controller(model)
        loss.backward(); opt.step(); opt.zero_grad()  # noqa: E702
    model.eval()
    stats = mm.l0_stats(model)
    assert abs(stats["total_l0"] / stats["max_l0"] - target) <= 0.02, stats["total_l0"]
