"""NeuroSurgeon's ``CircuitConfig``: a transformers ``PretrainedConfig`` (mutable, like NeuroSurgeon's).

It is translated into the library's [`modeopt_masks.CircuitConfig`][modeopt_masks.circuit.CircuitConfig] (and
validated) when a `CircuitModel`
is built, so it may be filled in step by step, as NeuroSurgeon's tests do.
Missing ``mask_hparams`` take NeuroSurgeon's defaults (``ablation="none"``,
``mask_unit="weight"``, ``mask_bias=False``, ``mask_init_value=0.0``,
``mask_init_percentage=0.5``, ``prune_percentage=0.2``).

Examples:
    >>> from modeopt_masks.compat.neurosurgeon.Models.model_configs import CircuitConfig
    >>> cfg = CircuitConfig(mask_method="magnitude_pruning", target_layers=["fc1"])
    >>> cfg.to_core().mask_hparams["prune_percentage"], cfg.to_dict()["l0_lambda"]
    (0.2, 1e-08)
"""

from __future__ import annotations

from typing import Any

from transformers import PretrainedConfig

from ....circuit import CircuitConfig as CoreCircuitConfig
from ....targets import mask_methods


class CircuitConfig(PretrainedConfig):
    """How a NeuroSurgeon ``CircuitModel`` masks a model (same arguments and defaults).

    Examples:
        >>> from modeopt_masks.compat.neurosurgeon.Models.model_configs import CircuitConfig
        >>> cfg = CircuitConfig(mask_method="hard_concrete", mask_hparams={"mask_init_percentage": 1.0})
        >>> cfg.target_layers = ["fc"]; cfg.to_core().mask_hparams["mask_init_percentage"]
        0.9999
    """

    model_type = "neurosurgeon_circuit"

    def __init__(
        self,
        mask_method: str = "continuous_sparsification",
        mask_hparams: dict[str, Any] = {},  # noqa: B006 - NeuroSurgeon's signature; copied below
        target_layers: list[str] = [],  # noqa: B006
        freeze_base: bool = True,
        add_l0: bool = True,
        l0_lambda: float = 1e-8,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.mask_method = mask_method
        self.mask_hparams = dict(mask_hparams or {})
        self.target_layers = list(target_layers or [])
        self.freeze_base = freeze_base
        self.add_l0 = add_l0
        self.l0_lambda = l0_lambda

    def to_core(self) -> CoreCircuitConfig:
        """The library's ``CircuitConfig`` for these settings (validated; errors name valid keys)."""
        from ..Masking.mask_layer import _BY_MODE, _load_families

        _load_families()
        if self.mask_method not in _BY_MODE:
            raise ValueError(
                f"unknown mask_method {self.mask_method!r}; choose one of {mask_methods()}"
            )
        family = _BY_MODE[self.mask_method]
        hparams = {n: d for n, d in family._ns_mask_args}
        hparams.update(self.mask_hparams)
        known = set(hparams) - {n for n, _ in family._ns_mask_args}
        rule = family._ns_rule({k: v for k, v in hparams.items() if k not in known})
        extra = {k: hparams[k] for k in known}  # e.g. ``scope``: the core config checks them
        return CoreCircuitConfig(
            mask_method=self.mask_method,
            mask_hparams={**rule, **extra, "ablation": hparams["ablation"]},
            target_layers=list(self.target_layers),
            freeze_base=self.freeze_base,
            add_l0=self.add_l0,
            l0_lambda=self.l0_lambda,
            use_cache=None,
        )
