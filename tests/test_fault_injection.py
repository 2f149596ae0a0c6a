"""Fault injection: ``convert``, ``restore``, ``export`` and ``save`` fail at every step in turn.

An :class:`Injector` wraps every function and method of the package, the ``nn.Module`` /
``Tensor`` calls the verbs make (``__setattr__``, ``train``, ``requires_grad_``, ``copy_``,
``load_state_dict``, ...) and the file operations of ``save`` (``mkstemp``, ``os.write``,
``os.fsync``, ``os.replace``, ...), and raises at the ``n``-th call, for ``n = 0, 1, 2, ...``
until a run completes. Odd ``n`` raise a ``KeyboardInterrupt``-like ``BaseException`` (a
kill), even ``n`` an ordinary ``RuntimeError``. After every fault the model must be bit for
bit as before (classes, ``__dict__`` keys and scalar attributes, parameter and buffer
identity, values, ``requires_grad``, hooks, train flags, mode history) and the checkpoint on
disk must be the old or the new one, restorable, with no temporary file left.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import inspect
import json
import os
import pkgutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn as nn
from pydantic import BaseModel

import modeopt_masks as mm
from modeopt_masks import dynamic
from modeopt_masks.persistence import STATE_FILE


class Fault(RuntimeError):
    """An ordinary error raised by the injector."""


class Kill(BaseException):
    """A ``KeyboardInterrupt``-like interruption raised by the injector."""


# the undo machinery itself is not a step of the verbs: a fault in the rollback is out of scope
_NOT_STEPS = {"Journal", "transaction", "protect", "_all_modules", "_snapshot_dict",
              "_restore_dict", "_same_view", "mode_history"}
_TORCH_STEPS = [
    (nn.Module, "__setattr__"), (nn.Module, "__delattr__"), (nn.Module, "train"),
    (nn.Module, "register_buffer"), (nn.Module, "register_parameter"),
    (nn.Module, "load_state_dict"), (torch.Tensor, "requires_grad_"), (torch.Tensor, "copy_"),
]
_FILE_STEPS = [(os, "write"), (os, "fsync"), (os, "replace"), (os, "rename"), (os, "fchmod"),
               (os, "open"), (os, "unlink"), (tempfile, "mkstemp")]


@functools.cache
def _package_steps() -> list[tuple[Any, str]]:
    """Every (owner, name) of a function or plain method defined in the package."""
    steps = []
    for info in pkgutil.walk_packages(mm.__path__, "modeopt_masks."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        for name, value in list(vars(module).items()):
            if name in _NOT_STEPS:
                continue
            if inspect.isfunction(value) and value.__module__.startswith("modeopt_masks"):
                steps.append((module, name))
            elif (inspect.isclass(value) and value.__module__ == info.name
                  and not issubclass(value, BaseModel)):
                steps += [(value, n) for n, v in vars(value).items()
                          if inspect.isfunction(v) and n not in ("__repr__", "__reduce_ex__")]
    return list({(id(o), n): (o, n) for o, n in steps}.values())


class Injector:
    """Raise at the ``fail_at``-th call of any wrapped step (once); count calls otherwise.

    Disarmed (``fail_at=None``) the wrapped steps only pass through.
    """

    def __init__(self) -> None:
        self.fail_at: int | None = None
        self.calls, self.fired = 0, False

    def reset(self, fail_at: int | None) -> None:
        self.fail_at, self.calls, self.fired = fail_at, 0, False

    def wrap(self, fn: Callable) -> Callable:
        @functools.wraps(fn)
        def step(*args: Any, **kwargs: Any) -> Any:
            if self.fail_at is not None and not self.fired:
                if self.calls == self.fail_at:
                    self.fired = True
                    raise (Kill if self.fail_at % 2 else Fault)(f"injected at call {self.calls}")
                self.calls += 1
            return fn(*args, **kwargs)
        return step

    @contextlib.contextmanager
    def installed(self, files: bool = False) -> Iterator[Injector]:
        steps = [*_package_steps(), *_TORCH_STEPS, *(_FILE_STEPS if files else [])]
        with pytest.MonkeyPatch.context() as patch:
            for owner, name in steps:
                patch.setattr(owner, name, self.wrap(getattr(owner, name)))
            # dynamic classes made now would keep the wrapped __reduce_ex__ after the patch
            # is undone (and fire the injector in later tests): a cache of their own
            patch.setattr(dynamic, "_CLASS_CACHE", {})
            yield self


def _injected(error: BaseException) -> bool:
    """``error`` is an injected fault, or raised from one (``load_state_dict`` keeps only the
    message of an error in ``copy_``)."""
    while error is not None:
        if isinstance(error, Fault | Kill) or "injected at call" in str(error):
            return True
        error = error.__cause__  # type: ignore[assignment]
    return False


def run_with_faults(setup: Callable[[], Any], op: Callable[[Any], Any],
                    check: Callable[[Any, Any], None], files: bool = False,
                    limit: int = 5000) -> int:
    """For ``n = 0, 1, ...``: ``state = setup()``, run ``op(state)`` failing at call ``n``,
    then ``check(state, fingerprint taken before)``; stops at the first ``n`` past the last
    call and returns it. (A fault the code catches itself, as a ``torch.fx`` tracing
    fallback does, is allowed: that run just completes.)"""
    injector = Injector()
    with injector.installed(files):
        for n in range(limit):
            injector.reset(None)
            state = setup()
            before = fingerprint(state if isinstance(state, nn.Module) else state[0])
            injector.reset(n)
            try:
                op(state)
            except BaseException as e:  # noqa: BLE001 - Kill is a BaseException
                if not _injected(e):
                    raise
                injector.reset(None)
                check(state, before)
                continue
            if not injector.fired:
                return n
    raise AssertionError(f"{op} still fails after {limit} injected faults")


# -- what must not change -------------------------------------------------------------------
_HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
          "_state_dict_hooks", "_load_state_dict_pre_hooks", "_load_state_dict_post_hooks")
_SCALARS = (bool, int, float, str, type(None))


def fingerprint(model: nn.Module) -> dict[str, Any]:
    modules = list(model.named_modules(remove_duplicate=False))
    return {
        "classes": [(n, type(m)) for n, m in modules],
        "dict_keys": [(n, sorted(m.__dict__)) for n, m in modules],
        "scalars": [(n, {k: v for k, v in m.__dict__.items() if isinstance(v, _SCALARS)})
                    for n, m in modules],
        "params": [(n, id(p), p.requires_grad, p.dtype, id(p.grad)) for n, p in
                   model.named_parameters(remove_duplicate=False)],
        "buffers": [(n, id(b)) for n, b in model.named_buffers(remove_duplicate=False)],
        "values": {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()},
        "hooks": [(n, {h: list(getattr(m, h).items()) for h in _HOOKS}) for n, m in modules],
        "history": [(s.mode, s.config.to_dict(), json.dumps(s.metadata, sort_keys=True))
                    for s in mm.mode_history(model)],
    }


def assert_unchanged(before: dict[str, Any], model: nn.Module) -> None:
    after = fingerprint(model)
    for key in before:
        if key != "values":
            assert after[key] == before[key], key
    assert after["values"].keys() == before["values"].keys()
    for k, v in before["values"].items():
        assert after["values"][k].dtype == v.dtype and torch.equal(after["values"][k], v), k


# -- models ---------------------------------------------------------------------------------
MODES: dict[str, tuple[str, dict]] = {
    "cs": ("continuous_sparsification", {"nn.Linear": {"mask_init_value": 0.1}}),
    "hc_neuron_bias": ("hard_concrete", {"nn.Linear": {"mask_unit": "neuron", "mask_bias": True}}),
    "magnitude_global": ("magnitude_pruning", {"scope": "global"}),
    "cs_frozen": ("continuous_sparsification", {"nn.Linear": {"mask_init_value": 0.1},
                                                "freeze_base": True}),
    "gradnas": ("gradnas", {"nn.Linear": {"ratios": [0.25, 0.5, 1.0]}}),
}


def _base(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 3))
    net[4].bias.requires_grad_(False)  # a frozen parameter that must stay frozen
    net[2].register_forward_hook(lambda m, i, o: None)  # a user's hook that must survive
    net.train()
    return net


def _converted(key: str, seed: int = 0) -> nn.Module:
    net = mm.convert(_base(seed), MODES[key])
    if key == "gradnas":
        from modeopt_masks.structured import gradnas_hparams

        hps = gradnas_hparams(net)
        hps["0"].keep([1, 4, 6, 7])
        hps["2"].keep([0, 2])
        return net
    with torch.no_grad():  # masks off their init, so a lost mask shows
        for layer in mm.masked_modules(net).values():
            for p in layer.weight_mask.parameters():
                p.add_(torch.randn_like(p))
    return net


def _outputs(net: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return net.eval()(torch.linspace(-1, 1, 12).reshape(2, 6))


# -- the verbs ------------------------------------------------------------------------------
@pytest.mark.parametrize("key", MODES)
def test_convert_fails_cleanly_at_every_step(key):
    calls = run_with_faults(_base, lambda net: mm.convert(net, MODES[key]),
                            lambda net, before: assert_unchanged(before, net))
    assert calls > 5


@pytest.mark.parametrize("key", MODES)
def test_export_fails_cleanly_at_every_step(key):
    x = torch.randn(5, 6)
    with torch.no_grad():
        ref = _converted(key).eval()(x)

    def check(net: nn.Module, before: dict) -> None:
        assert_unchanged(before, net)
        with torch.no_grad():  # and it still computes what it computed
            assert torch.equal(net(x), ref)

    calls = run_with_faults(lambda: _converted(key).eval(), mm.export, check)
    assert calls > 3


@pytest.mark.parametrize("key", MODES)
def test_restore_fails_cleanly_at_every_step(tmp_path, key):
    src = _converted(key)
    mm.save(src, tmp_path)

    faults = []

    def check(net: nn.Module, before: dict) -> None:
        assert_unchanged(before, net)
        faults.append(1)
        if len(faults) % 3 == 1:  # (a sample: each restore costs) the model is not stuck
            assert torch.equal(_outputs(mm.restore(net, tmp_path)), _outputs(src))

    calls = run_with_faults(lambda: _base(seed=3), lambda net: mm.restore(net, tmp_path), check)
    assert calls > 5


@pytest.mark.parametrize("key", ["cs", "magnitude_global", "gradnas"])
def test_save_over_a_checkpoint_leaves_the_old_or_the_new_one(tmp_path, key):
    old = _converted(key, seed=0)
    want_old, want_new = _outputs(old), _outputs(_converted(key, seed=1))
    seen: list[str] = []

    def setup() -> tuple[nn.Module, Path]:
        d = Path(tempfile.mkdtemp(dir=tmp_path))
        mm.save(old, d)
        new = _converted(key, seed=1)
        mm.save(new, tempfile.mkdtemp(dir=tmp_path))  # every save refreshes the metadata
        return new, d

    def check(state: tuple[nn.Module, Path], before: dict) -> None:
        new, d = state
        assert_unchanged(before, new)
        names = sorted(p.name for p in d.iterdir())
        assert not [n for n in names if n.startswith(".") or n.endswith(".tmp")], names
        out = _outputs(mm.restore(_base(seed=7), d))
        seen.append("new" if torch.equal(out, want_new) else "old")
        assert torch.equal(out, want_new if seen[-1] == "new" else want_old)

    calls = run_with_faults(setup, lambda state: mm.save(*state), check, files=True)
    assert calls > 5 and "old" in seen
    assert seen == sorted(seen, key=["old", "new"].index), "a later fault gave the old one back"
    new, d = setup()  # a clean save over the old checkpoint leaves the new one only
    mm.save(new, d)
    names = sorted(p.name for p in d.iterdir())
    assert len(names) == 2 and names[1] == STATE_FILE and names[0].endswith(".safetensors")


def test_injector_reaches_the_steps_it_claims():
    """The harness is not vacuous: it wraps the class swap, freeze_base and the file writes."""
    names = {n for _, n in _package_steps()}
    assert {"swap_class", "_freeze_base", "_mm_init", "slice_structure", "_write_file",
            "after_convert", "_load_tensors"} <= names
    net = _base()
    injector = Injector()
    with injector.installed(files=True):
        injector.reset(10**9)
        mm.save(mm.convert(net, MODES["cs_frozen"]), Path(tempfile.mkdtemp()))
    assert injector.calls > 20 and not injector.fired
