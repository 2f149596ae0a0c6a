"""NeuroSurgeon's documented API (its API pages autodoc every member) exists in the compat package.

``ns_api.json`` is NeuroSurgeon's API surface, read from its source by ``port.py``:
every public class, its public methods/properties, and the parameters (with their
defaults) of ``__init__`` and ``from_layer``. Each is one check here. The examples
in NeuroSurgeon's docs (its README has none; the API pages show one, the
temperature callback of ``ContSparseLayer``) run unchanged in ``test_documented_examples``.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import json
from pathlib import Path

import pytest
import torch
import torch.nn as nn

PREFIX = "modeopt_masks.compat.neurosurgeon"
SURFACE = json.loads((Path(__file__).parent / "ns_api.json").read_text())

#: documented defaults that differ on purpose (NeuroSurgeon typos), with the reason
DIFFERENT_DEFAULTS = {
    ("Masking.contsparse_layer", "ContSparseConv2d", "from_layer", "mask_unit"):
        "NeuroSurgeon's default 'none' is not a mask unit (its __init__ says 'weight')",
    ("Masking.hardconcrete_layer", "HardConcreteConv1d", "from_layer", "mask_bias"):
        "NeuroSurgeon's True differs from every other layer's False (and its __init__'s)",
    ("Masking.hardconcrete_layer", "HardConcreteConv1d", "__init__", "mask_init_percentage"):
        "NeuroSurgeon's 0.0 masks every weight; its Linear and Conv2d default to 0.5",
    ("Masking.contsparse_layer", "ContSparseConv1d", "__init__", "mask_init_value"): None,
}
DIFFERENT_DEFAULTS = {k: v for k, v in DIFFERENT_DEFAULTS.items() if v}


def _checks():
    for module, classes in sorted(SURFACE.items()):
        for cls, spec in sorted(classes.items()):
            yield pytest.param(module, cls, "class", None, None, id=f"{module}.{cls}")
            for member in spec["members"]:
                yield pytest.param(module, cls, "member", member, None,
                                   id=f"{module}.{cls}.{member}")
            for method, params in sorted(spec["signatures"].items()):
                for name, default in params:
                    marks = []
                    reason = DIFFERENT_DEFAULTS.get((module, cls, method, name))
                    if reason:
                        marks.append(pytest.mark.xfail(strict=True, reason=reason))
                    yield pytest.param(module, cls, method, name, default, marks=marks,
                                       id=f"{module}.{cls}.{method}.{name}")


def _instance(cls):
    """A built layer for member checks of abstract layer classes (their members live there)."""
    from modeopt_masks.compat.neurosurgeon.Masking.mask_layer import MaskLayer

    if not (isinstance(cls, type) and issubclass(cls, MaskLayer)):
        return None
    concrete = cls if cls._ns_key else next(
        c for c in _all_layer_classes() if issubclass(c, cls) and c._ns_key == "nn.Linear")
    return concrete(2, 2, 3) if concrete._ns_key.startswith("nn.Conv") else concrete(4, 4)


def _all_layer_classes():
    from modeopt_masks.compat.neurosurgeon.Masking.mask_layer import _NAMES

    return list(_NAMES.values())


@pytest.mark.parametrize("module, cls, what, name, default", list(_checks()))
def test_documented_api(module, cls, what, name, default):
    obj = getattr(importlib.import_module(f"{PREFIX}.{module}"), cls)
    if what == "class":
        assert isinstance(obj, type)
        return
    if what == "member":
        assert hasattr(obj, name) or hasattr(_instance(obj), name)
        return
    if what == "__init__" and getattr(obj, "_ns_key", "") is None:
        # an abstract layer class: its arguments are what every layer of it has
        assert hasattr(_instance(obj), name)
        return
    target = obj if what == "__init__" else getattr(obj, what)
    params = inspect.signature(target).parameters
    if name in ("layer_fn",):  # NeuroSurgeon's private conv base argument: not on the public names
        return
    assert name in params, f"{cls}.{what} lacks {name!r}: {list(params)}"
    if default is not None:
        ours = params[name].default
        try:
            expected = ast.literal_eval(default)
        except ValueError:  # an expression such as 2 / 3
            expected = eval(default, {})  # noqa: S307 - NeuroSurgeon's own default literal
        assert ours == pytest.approx(expected) if isinstance(expected, float) else ours == expected


def test_documented_examples():
    """The code example of NeuroSurgeon's API pages (``ContSparseLayer``), unchanged."""

    class TemperatureCallback:
        def __init__(self, total_epochs, final_temp):
            self.temp_increase = final_temp ** (1.0 / total_epochs)

        def update(self, model):
            temp = model.temperature
            model.temperature = temp * self.temp_increase

    from modeopt_masks.compat.neurosurgeon.Models.circuit_model import CircuitModel
    from modeopt_masks.compat.neurosurgeon.Models.model_configs import CircuitConfig

    circuit = CircuitModel(CircuitConfig(target_layers=["0"]), nn.Sequential(nn.Linear(4, 4)))
    callback = TemperatureCallback(total_epochs=4, final_temp=200)
    for _ in range(4):
        callback.update(circuit)
    assert circuit.temperature == pytest.approx(200)
    assert circuit.wrapped_model[0].weight_mask.temperature == pytest.approx(200)
    soft = circuit.wrapped_model[0]._compute_mask("weight_mask_params")
    assert torch.allclose(soft, torch.full_like(soft, 0.5))  # logits 0: sigmoid(200 * 0)
