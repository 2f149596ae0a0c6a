"""Device and dtype correctness without a GPU: the ``meta`` device, a factory recorder, float64.

CPU-only PyTorch has a second device, ``meta`` (shapes and dtypes, no values). A
tensor the library creates on the CPU and mixes into a meta model's computation
raises a device-mismatch error, and ``.item()`` / ``float()`` / ``int()`` on a meta
tensor raise too: a path that runs on ``meta`` creates nothing on the wrong device
and makes no host sync, which is what CUDA needs. Covered on ``meta``:

* every mask mode (Linear, Conv2d, ``hf.Conv1D``; weight and neuron units, bias
  masks): masks created on the layer's device at convert, training forward and
  backward, ``l0_loss`` (masks on and off), eval forward with ``none``,
  ``zero_ablate`` and ``random_ablate``; ``CircuitModel`` training steps with
  ``l0_lambda`` and with a ``DensityController`` (so neither makes a host sync);
* ``gradnas``: convert, masked forward with a selection, export, forward after export;
* ``ResidualUpdateModel`` caching (on a plain and on a masked model).

What ``meta`` cannot run (data-dependent: values, ``nonzero``, ``int(t.sum())``):
``magnitude_pruning``'s *conversion* (it ranks weights; converted on CPU, then moved),
``l0_stats`` (returns numbers), the ``randomly_sampled`` / ``complement_sampled``
draws (the number of circuit entries), ``collect_scores`` (it checks the scores are
finite). There :class:`UndevicedFactories` runs the code on CPU and records every
factory call (``torch.zeros``, ``arange``, ``tensor``, ``randperm``...) made from the
library without a ``device=``: such a tensor lands on the CPU whatever device the
model is on. The tests assert there is none.

The float64 tests check ``model.to(torch.float64)`` of every mode: masks off (or
keeping everything) give exactly the float64 plain model's outputs, and learned
masks computed and trained in float64 stay float64 (no silent ``.float()``).
"""

from __future__ import annotations

import copy
import inspect
import os

import pytest
import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode

import modeopt_masks as mm

META = torch.device("meta")
LEARNABLE = ("continuous_sparsification", "hard_concrete")
MODES = (*LEARNABLE, "magnitude_pruning")
LIB_DIR = os.path.dirname(mm.__file__)
TORCH_DIR = os.path.dirname(torch.__file__)
FACTORIES = {
    torch.arange, torch.zeros, torch.ones, torch.empty, torch.full, torch.rand, torch.randn,
    torch.randint, torch.randperm, torch.tensor, torch.as_tensor, torch.eye, torch.linspace,
    torch.scalar_tensor,
}


class UndevicedFactories(TorchFunctionMode):
    """Records factory calls made directly from files under ``root`` without a ``device=``.

    ``as_tensor`` of a tensor keeps its device and is not recorded.
    """

    def __init__(self, root: str = LIB_DIR) -> None:
        super().__init__()
        self.root = root
        self.calls: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if (func in FACTORIES and kwargs.get("device") is None
                and not (func is torch.as_tensor and args and isinstance(args[0], torch.Tensor))):
            frame = inspect.currentframe()
            assert frame is not None
            frame = frame.f_back  # the caller: the first frame outside torch's own code
            while frame is not None and frame.f_code.co_filename.startswith(TORCH_DIR):
                frame = frame.f_back
            if frame is not None and frame.f_code.co_filename.startswith(self.root):
                where = f"{os.path.relpath(frame.f_code.co_filename, self.root)}:{frame.f_lineno}"
                self.calls.append(f"torch.{func.__name__} at {where}")
        return func(*args, **kwargs)


class Net(nn.Module):
    """Conv2d -> Linear -> hf.Conv1D (when transformers is there): every layer kind but Conv1d."""

    def __init__(self, device: torch.device | None = None) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, device=device)
        self.fc = nn.Linear(16, 8, device=device)
        try:
            from transformers.pytorch_utils import Conv1D
        except ImportError:  # pragma: no cover
            self.out: nn.Module = nn.Linear(8, 4, device=device)
        else:
            self.out = Conv1D(4, 8).to(device or "cpu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.fc(torch.relu(self.conv(x)).flatten(1))))


def _spec(mode: str, unit: str = "weight") -> tuple[str, dict]:
    rule = {"mask_bias": True, "mask_unit": unit}
    return mode, {k: rule for k in ("nn.Linear", "nn.Conv2d", "hf.Conv1D")}


def _x(device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(1)).to(device, dtype)


def _meta_model(mode: str, unit: str) -> nn.Module:
    """Built on meta *outside* any default-device context: a mask the library created on the
    CPU and failed to move would stay on the CPU (and fail the device checks)."""
    torch.manual_seed(0)
    if mode == "magnitude_pruning":  # ranks weight values: converted on CPU, then moved
        return mm.convert(Net(), _spec(mode, unit)).to(META)
    return mm.convert(Net(device=META), _spec(mode, unit))


def _devices(module: nn.Module) -> set[str]:
    return {t.device.type for t in (*module.parameters(), *module.buffers())}


def test_recorder_catches_an_undeviced_factory():
    rec = UndevicedFactories(root=os.path.dirname(__file__))
    with rec:
        torch.zeros((), device="cpu")
        torch.as_tensor(torch.ones(1))
        torch.zeros(())  # what l0_loss of an all-off model used to return: always on the CPU
    assert len(rec.calls) == 2 and rec.calls[-1].startswith("torch.zeros at test_devices.py:")


# -- mask modes on meta ----------------------------------------------------------------------
@pytest.mark.parametrize("unit", ["weight", "neuron"])
@pytest.mark.parametrize("mode", MODES)
def test_mask_modes_run_on_meta(mode, unit):
    net = _meta_model(mode, unit)
    assert _devices(net) == {"meta"}  # every mask followed its layer at convert
    x = _x(META)
    net.train()
    out = net(x)
    loss = out.sum() + mm.l0_loss(net)
    assert out.device == META and loss.device == META
    if mode in LEARNABLE:
        loss.backward()
        grads = [p.grad for n, p in net.named_parameters() if "_mask" in n]
        assert grads and all(g is not None and g.device == META for g in grads)
    mm.use_masks(net, False)
    assert mm.l0_loss(net).device == META  # every mask off: still the model's device
    mm.use_masks(net, True)
    net.eval()
    for ablation in ("none", "zero_ablate", "random_ablate"):
        mm.set_ablation(net, ablation)
        with torch.no_grad():
            assert net(x).device == META, ablation
        assert mm.l0_loss(net).device == META
    draws = [t for layer in mm.masked_modules(net).values() for t in layer._mm_random.values()]
    assert draws and all(t.device == META for t in draws)  # random_ablate drew on the device


@pytest.mark.parametrize("mode", MODES)
def test_no_library_tensor_is_created_without_a_device(mode):
    """On CPU (values needed): every path, the data-dependent ablations included."""
    torch.manual_seed(0)
    net = mm.convert(Net(), _spec(mode))
    with torch.no_grad():  # a quarter of each learned mask in the circuit (complement_sampled)
        for name, p in net.named_parameters():
            if "_mask." in name:
                p.copy_((torch.arange(p.numel()) % 4 == 0).view_as(p).float() * 2 - 1)
    x = _x()
    ctrl = mm.training.DensityController(0.5, warmup_steps=2)  # buffers: moved by .to()
    with UndevicedFactories() as rec:
        net.train()
        (net(x).sum() + mm.l0_loss(net)).backward()
        if mode in LEARNABLE:
            ctrl(net)
        mm.use_masks(net, False)
        mm.l0_loss(net)
        mm.use_masks(net, True)
        net.eval()
        mm.l0_stats(net)
        for ablation in mm.ABLATIONS:
            mm.set_ablation(net, ablation, force_resample=True)
            net(x)
            net(x)  # the cached path too
        mm.sync_ablation_draws(net)
    assert rec.calls == []


def test_circuit_training_steps_run_on_meta():
    """``l0_lambda`` and ``DensityController`` steps: no CPU tensor, no host sync."""
    from modeopt_masks.circuit import CircuitConfig, CircuitModel
    from modeopt_masks.training import DensityController

    class Clf(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(4, 8), nn.Linear(8, 3)

        def forward(self, x, labels=None):
            logits = self.fc2(torch.relu(self.fc1(x)))
            return {"loss": nn.functional.cross_entropy(logits, labels), "logits": logits}

    x, labels = torch.randn(5, 4, device=META), torch.zeros(5, dtype=torch.long, device=META)
    for method in LEARNABLE:
        cfg = CircuitConfig(mask_method=method, target_layers=["fc*"], l0_lambda=1e-3)
        for ctrl in (None, DensityController(0.5, warmup_steps=2)):
            circuit = CircuitModel(cfg, Clf(), density_controller=ctrl).to(META).train()
            assert _devices(circuit) == {"meta"}
            for _ in range(3):  # the warm-up branch and past it
                loss = circuit(x, labels=labels)["loss"]
                assert loss.device == META
                loss.backward()
            if ctrl is not None:
                assert ctrl.lambda_1.device == META and ctrl._last_density is not None


# -- gradnas and ResidualUpdateModel on meta ---------------------------------------------------
def _gradnas_families() -> list[str]:
    try:
        import transformers  # noqa: F401
    except ImportError:  # pragma: no cover
        return ["plain_mlp", "plain_conv"]
    return ["plain_mlp", "plain_conv", "gpt2", "llama"]


@pytest.mark.parametrize("family", _gradnas_families())
def test_gradnas_convert_forward_export_on_meta(family):
    from gradnas_helpers import make_input, make_model, output_tensor

    ref = make_model(family)
    net = mm.convert(copy.deepcopy(ref).to(META), "gradnas")
    hps = mm.gradnas_hparams(net)
    for hp in hps.values():
        hp.keep(list(range(hp.choices[0])))
    assert _devices(net) == {"meta"}
    inputs = {k: v.to(META) for k, v in make_input(family, batch=2).items()}
    inputs.pop("labels", None)
    out = output_tensor(net(**inputs))
    assert out.device == META
    smaller = {n: hp.choices[0] for n, hp in hps.items()}
    mm.export(net)
    assert _devices(net) == {"meta"}
    assert sum(p.numel() for p in net.parameters()) < sum(p.numel() for p in ref.parameters())
    after = output_tensor(net(**inputs))
    assert after.device == META and after.shape == out.shape
    assert smaller  # something was pruned


def test_gradnas_scores_create_nothing_without_a_device():
    from gradnas_helpers import loader, loss_of, make_model

    net = mm.convert(make_model("plain_mlp"), "gradnas")
    with UndevicedFactories() as rec:
        scores = mm.collect_scores(net, loader("plain_mlp", 2), loss_func=loss_of(), progress=False)
        for hp in mm.gradnas_hparams(net).values():
            hp.set_active(hp.choices[0])
    assert scores and rec.calls == []


@pytest.mark.parametrize("masked", [False, True])
def test_residual_update_model_caches_on_meta(masked):
    transformers = pytest.importorskip("transformers")
    from modeopt_masks.probing import ResidualUpdateModel

    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=40, n_positions=16, n_embd=32, n_layer=2, n_head=4)
    model = transformers.GPT2Model(cfg).to(META)
    if masked:
        model = mm.convert(model, ("hard_concrete", {"hf.Conv1D": {"*mlp*": {}}}))
    rum = ResidualUpdateModel({"target_layers": [0, 1], "stream": True}, model).train()
    ids = torch.zeros(2, 5, dtype=torch.long, device=META)
    rum(input_ids=ids)
    assert sorted(rum.vector_cache) == sorted(rum.config.vector_names())
    assert all(v.device == META and v.shape == (2, 5, 32) for v in rum.vector_cache.values())
    if masked:
        sum(v.sum() for v in rum.vector_cache.values()).backward()
        assert all(t.log_alpha.grad is not None and t.log_alpha.grad.device == META
                   for layer in mm.masked_modules(model).values() for _, t in layer._mask_modules())


# -- float64 -----------------------------------------------------------------------------------
_KEEP_ALL = {"continuous_sparsification": {"mask_init_value": 1.0},
             "hard_concrete": {"mask_init_percentage": 0.99},
             "magnitude_pruning": {"prune_percentage": 0.0}}


@pytest.mark.parametrize("mode", MODES)
def test_to_float64_matches_the_float64_plain_model(mode):
    torch.manual_seed(0)
    plain = Net()
    name, rules = _spec(mode)
    rules = {k: {**r, **_KEEP_ALL[mode]} for k, r in rules.items()}
    net = mm.convert(copy.deepcopy(plain), (name, rules)).to(torch.float64)
    plain = plain.to(torch.float64)
    floats = [t for t in (*net.parameters(), *net.buffers()) if t.is_floating_point()]
    assert {t.dtype for t in floats} == {torch.float64}
    x = _x(dtype=torch.float64)
    for train in (True, False):
        net.train(train)
        mm.use_masks(net, False)
        assert torch.equal(net(x), plain(x))  # masks off: exactly the float64 model
        mm.use_masks(net, True)
        if not train or mode == "magnitude_pruning":  # hard masks keeping everything
            out = net(x)
            assert out.dtype == torch.float64 and torch.equal(out, plain(x))


@pytest.mark.parametrize("mode", LEARNABLE)
def test_learned_masks_train_in_float64(mode):
    torch.manual_seed(0)
    net = mm.convert(Net(), _spec(mode)).to(torch.float64).train()
    mm.set_temperature(net, 3.0)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    x = _x(dtype=torch.float64)
    for _ in range(3):
        loss = net(x).pow(2).mean() + 1e-3 * mm.l0_loss(net)
        assert loss.dtype == torch.float64
        opt.zero_grad()
        loss.backward()
        opt.step()
    for layer in mm.masked_modules(net).values():
        for _, tech in layer._mask_modules():
            param = tech.logits if mode == "continuous_sparsification" else tech.log_alpha
            assert param.dtype == param.grad.dtype == torch.float64
            assert tech.mask().dtype == tech.l0().dtype == torch.float64  # no float32 detour
            if mode == "continuous_sparsification":
                assert torch.equal(tech.mask(), torch.sigmoid(3.0 * param))
            else:
                shift = 3.0 * torch.log(torch.tensor(0.1 / 1.1, dtype=torch.float64))
                torch.testing.assert_close(tech.l0(), torch.sigmoid(param - shift).sum(),
                                           rtol=1e-15, atol=0)
        assert layer.effective_weight().dtype == torch.float64
    assert mm.l0_loss(net).dtype == torch.float64


@pytest.mark.parametrize("mode", MODES)
def test_converting_a_float64_or_bf16_model_picks_the_mask_dtype(mode):
    for dtype, want in ((torch.float64, torch.float64), (torch.bfloat16, torch.float32)):
        net = mm.convert(Net().to(dtype), _spec(mode))
        masks = {n: t.dtype for n, t in net.state_dict().items() if "_mask." in n}
        expected = torch.bool if mode == "magnitude_pruning" else want
        assert masks and set(masks.values()) == {expected}, (dtype, masks)
