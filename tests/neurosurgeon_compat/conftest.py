"""NeuroSurgeon's ported tests that cannot pass here, each with its reason (also in docs/neurosurgeon.md).

They still run: ``xfail(strict=True)`` fails the suite if one of them starts passing,
so this list (and the docs) can never silently go stale.
"""

from __future__ import annotations

import pytest

_CHILD_MODULES = (
    "asserts that every module other than the mask layers is in eval mode; here a mask "
    "layer's masks are child modules (the library's MaskTechnique objects) that train with "
    "their layer"
)
_VIT_NAMES = (
    "names ViT modules of transformers 4 (encoder.layer.N.attention.attention.query); "
    "transformers 5 renamed them (layers.N.attention.q_proj)"
)

#: test id (file::name) -> why it cannot pass here
EXCLUDED: dict[str, str] = {
    "test_ns_models_circuit_model_bert.py::test_model_freezing_bert": _CHILD_MODULES,
    "test_ns_probing_subnetwork_probe.py::test_subnetwork_probe_training_state": _CHILD_MODULES,
    "test_ns_probing_circuit_probe.py::test_circuit_probe_training": _CHILD_MODULES,
    "test_ns_models_other_models.py::test_replace_layers_vit": _VIT_NAMES,
    "test_ns_models_other_models.py::test_forward_pass_vit": _VIT_NAMES,
    "test_ns_models_other_models.py::test_training_vit": _VIT_NAMES,
}
#: flaky in NeuroSurgeon itself: skipped, not xfailed
FLAKY: dict[str, str] = {
    "test_ns_models_circuit_model_bert.py::test_hardconcrete_training_bert": (
        "asserts that every one of 65,536 hard-concrete mask parameters moves in two AdamW "
        "steps; an entry whose two updates cancel to the last float bit stays put (one did "
        "with this seed), in NeuroSurgeon as here"
    ),
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        key = f"{item.path.name}::{item.name}"
        if key in EXCLUDED:
            item.add_marker(pytest.mark.xfail(reason=EXCLUDED[key], strict=True))
        elif key in FLAKY:
            item.add_marker(pytest.mark.skip(reason=FLAKY[key]))


@pytest.fixture(autouse=True)
def _seeded() -> None:
    """NeuroSurgeon's tests draw unseeded random masks (e.g. ``rand - 0.6`` expected to keep
    under half of 100 entries); a fixed seed per test keeps them independent of test order."""
    import torch

    torch.manual_seed(0)
