"""Mask-training helpers: temperature schedules, a target-density controller, an HF callback.

* [`ExponentialSchedule`][modeopt_masks.training.ExponentialSchedule]: a temperature going exponentially from ``initial`` to
  ``final`` over ``total`` steps or epochs (Savarese et al. multiply the temperature
  by ``final ** (1 / epochs)`` once per epoch, from 1 to about 200).
* [`DensityController`][modeopt_masks.training.DensityController]: ask for a fraction of mask entries kept instead of tuning
  an L0 lambda. A Lagrangian term on the expected density ``d`` with target ``t``,
  ``lambda_1 (d - t) + lambda_2 (d - t)^2`` (CoFi pruning, Xia et al. 2022), whose
  multipliers rise by gradient *ascent* while the masks descend.
* ``MaskTrainingCallback``: a ``transformers.TrainerCallback`` that anneals the
  temperature and logs L0 statistics. ``transformers`` is imported only when the
  name is first used, so the rest of this module works without it.

Examples:
    A plain training loop:

    >>> import torch, torch.nn as nn, modeopt_masks as mm
    >>> from modeopt_masks.training import DensityController, ExponentialSchedule
    >>> net = mm.convert(nn.Sequential(nn.Linear(8, 8)), "continuous_sparsification")
    >>> sched, ctrl = ExponentialSchedule(1.0, 100.0, total=10), DensityController(0.2)
    >>> opt = torch.optim.Adam(net.parameters(), lr=0.1)
    >>> for epoch in range(10):
    ...     _ = sched.apply(net, epoch)
    ...     loss = net(torch.randn(4, 8)).pow(2).mean() + ctrl(net)
    ...     opt.zero_grad(); loss.backward(); opt.step()
    >>> round(mm.get_temperature(net), 1), int(ctrl.steps)   # 10 multiplier ascent steps
    (63.1, 10)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn as nn

from .distributed import full_value
from .mask_controls import get_temperature, l0_stats, masked_modules, set_temperature

__all__ = [
    "DensityController",
    "ExponentialSchedule",
    "MaskTrainingCallback",
    "expected_density",
]


@dataclass(frozen=True)
class ExponentialSchedule:
    """Exponential interpolation from ``initial`` to ``final`` over ``total`` steps (or epochs).

    ``schedule(t) = initial * (final / initial) ** min(t / total, 1)``: call it per
    step or per epoch, whichever ``t`` counts.

    Args:
        initial: Value at ``t = 0``.
        final: Value from ``t = total`` on.
        total: Number of steps (or epochs) of the interpolation.

    Examples:
        >>> from modeopt_masks.training import ExponentialSchedule
        >>> s = ExponentialSchedule(initial=1.0, final=200.0, total=4)
        >>> [round(s(t), 2) for t in range(6)]
        [1.0, 3.76, 14.14, 53.18, 200.0, 200.0]
    """

    initial: float = 1.0
    final: float = 200.0
    total: int = 10

    def __post_init__(self) -> None:
        if not (self.initial > 0 and self.final > 0):
            raise ValueError(
                f"temperatures must be positive, got initial={self.initial}, final={self.final}"
            )
        if not self.total >= 1:
            raise ValueError(f"total (steps or epochs) must be >= 1, got {self.total}")

    def __call__(self, t: float) -> float:
        frac = min(max(float(t) / self.total, 0.0), 1.0)
        return float(self.initial * (self.final / self.initial) ** frac)

    def apply(self, model: nn.Module, t: float) -> float:
        """Set every mask temperature of ``model`` to ``self(t)`` and return it."""
        temperature = self(t)
        set_temperature(model, temperature)
        return temperature


def expected_density(model: nn.Module) -> torch.Tensor:
    """Active masks' expected kept fraction: ``sum L0 / number of mask entries`` (differentiable).

    In training this is the expected L0 of the soft/stochastic masks; in eval the
    hard circuit's fraction.

    Args:
        model: A model with active learned masks.

    Returns:
        A scalar tensor in ``[0, 1]``.

    Examples:
        >>> import torch.nn as nn, modeopt_masks as mm
        >>> from modeopt_masks.training import expected_density
        >>> net = mm.convert(nn.Sequential(nn.Linear(10, 10)), "magnitude_pruning")
        >>> float(expected_density(net))
        0.5
    """
    own = getattr(model, "expected_density", None)
    if callable(own):  # masks that are not per-layer (edge masks) define their own density
        return own()
    techniques = [
        tech for layer in masked_modules(model).values() if layer.use_masks
        for _, tech in layer._mask_modules()
    ]
    if not techniques:
        raise ValueError("the model has no active masked layers: convert it with a mask mode first")
    total = sum(math.prod(t.shape) for t in techniques)
    l0 = torch.stack([full_value(t.l0()).float() for t in techniques]).sum()
    return l0 / total


class DensityController(nn.Module):
    """Keep ``target_density`` of the mask entries, by a Lagrange multiplier (CoFi style).

    ``controller(model)`` returns ``lambda_1 * (d - t) + lambda_2 * (d - t) ** 2``
    for the expected density ``d`` ([`expected_density`][modeopt_masks.training.expected_density]) and the current target
    ``t``; add it to the task loss in place of ``l0_lambda * L0``. In training (module
    in train mode, grad enabled) each call then takes one gradient-*ascent* step on
    the multipliers: ``lambda_1 += lr * (d - t)``, ``lambda_2 += lr * (d - t) ** 2``,
    so the pressure grows until the density sits at the target; no separate optimiser
    or ``step()`` call is needed (works unchanged in the HF ``Trainer`` through
    ``CircuitModel(..., density_controller=...)``).

    ``lambda_2_init`` starts ``lambda_2`` above zero: the quadratic term's gradient
    ``2 lambda_2 (d - t)`` is a proportional term that damps the oscillation a pure
    integral multiplier shows against Adam-trained masks (cf. the PID Lagrangian of
    Stooke et al. 2020). The defaults (``lr=10``, ``lambda_2_init=300``) suit losses
    of order one (cross-entropy); scale both with your loss.

    ``warmup_steps`` moves the target linearly from the density at the first call to
    ``target_density`` (CoFi's warm-up), which is gentler on the task. The multipliers
    are buffers (saved in ``state_dict``), never seen by the model's optimiser.
    Magnitude-pruning masks are fixed, so they cannot be controlled.

    Args:
        target_density: The fraction of mask entries to keep, in ``(0, 1)``.
        lr: Step size of the multipliers' gradient ascent.
        lambda_2_init: Initial quadratic multiplier.
        warmup_steps: Steps over which the target moves from the first density to
            ``target_density`` (0: at once).

    Examples:
        >>> import torch, torch.nn as nn, modeopt_masks as mm
        >>> from modeopt_masks.training import DensityController
        >>> net = mm.convert(nn.Sequential(nn.Linear(4, 4)), "continuous_sparsification")
        >>> ctrl = DensityController(target_density=0.1, lr=1.0, lambda_2_init=0.0)
        >>> penalty = ctrl(net)           # density 0.5 (sigmoid(0)): gap 0.4, multipliers were 0
        >>> round(float(penalty.detach()), 3), round(ctrl.lambda_1.item(), 3), round(ctrl.lambda_2.item(), 3)
        (0.0, 0.4, 0.16)
    """

    lambda_1: torch.Tensor
    lambda_2: torch.Tensor
    steps: torch.Tensor
    initial_density: torch.Tensor

    def __init__(
        self,
        target_density: float,
        lr: float = 10.0,
        lambda_2_init: float = 300.0,
        warmup_steps: int = 0,
    ) -> None:
        super().__init__()
        if not 0.0 <= target_density <= 1.0:
            raise ValueError(f"target_density is a fraction in [0, 1], got {target_density}")
        if not lr > 0:
            raise ValueError(f"lr must be positive, got {lr}")
        if not lambda_2_init >= 0:
            raise ValueError(f"lambda_2_init must be >= 0, got {lambda_2_init}")
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
        self.target_density = float(target_density)
        self.lr = float(lr)
        self.warmup_steps = int(warmup_steps)
        self.register_buffer("lambda_1", torch.zeros((), dtype=torch.float64))
        self.register_buffer("lambda_2", torch.full((), float(lambda_2_init), dtype=torch.float64))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        self.register_buffer("initial_density", torch.full((), float("nan"), dtype=torch.float64))
        self._last_density: torch.Tensor | None = None

    @property
    def last_density(self) -> float | None:
        """The expected density of the last call (``None`` before the first)."""
        return None if self._last_density is None else float(self._last_density)

    def target(self) -> float:
        """The target of the current step (the final target once warm-up is over)."""
        start = float(self.initial_density)
        if int(self.steps) >= self.warmup_steps or math.isnan(start):
            return self.target_density
        frac = int(self.steps) / self.warmup_steps
        return start + (self.target_density - start) * frac

    def _target_tensor(self) -> torch.Tensor:
        """`target` as a float64 tensor on the buffers' device (no host sync)."""
        init, final = self.initial_density, torch.full_like(self.initial_density, self.target_density)
        if self.warmup_steps == 0:
            return final
        frac = self.steps.to(init.dtype) / self.warmup_steps
        warm = init + (self.target_density - init) * frac
        return torch.where(torch.isnan(init) | (self.steps >= self.warmup_steps), final, warm)

    def forward(self, model: nn.Module) -> torch.Tensor:
        # tensor arithmetic only: with the controller on the masks' device (it follows
        # ``CircuitModel.to``) a training step makes no host sync
        density = expected_density(model)
        if not density.requires_grad and torch.is_grad_enabled() and self.training:
            raise ValueError(
                "the expected density does not depend on any trainable mask (magnitude_pruning "
                "masks are fixed, or the masks are in eval mode): nothing to control"
            )
        measured = density.detach().to(self.initial_density)
        self.initial_density.copy_(
            torch.where(torch.isnan(self.initial_density), measured, self.initial_density)
        )
        gap = density - self._target_tensor().to(density)
        l1, l2 = self.lambda_1.to(density), self.lambda_2.to(density)
        penalty = l1 * gap + l2 * gap * gap
        self._last_density = measured
        if self.training and torch.is_grad_enabled():
            g = gap.detach().to(self.lambda_1)
            self.lambda_1.add_(self.lr * g)
            self.lambda_2.add_(self.lr * g * g)
            self.steps.add_(1)
        return penalty

    def extra_repr(self) -> str:
        return (
            f"target_density={self.target_density}, lr={self.lr}, "
            f"warmup_steps={self.warmup_steps}"
        )


# -- Hugging Face Trainer callback -------------------------------------------------------
try:  # transformers is optional; trainer_callback alone is light (no Trainer import)
    from transformers.trainer_callback import TrainerCallback as _TrainerCallbackBase
except ImportError:  # pragma: no cover - exercised in a subprocess test without transformers

    class _TrainerCallbackBase:  # type: ignore[no-redef]
        """Stand-in base when transformers is missing: constructing the callback raises."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            raise ImportError(
                "MaskTrainingCallback needs transformers (pip install 'modeopt-masks[hf]'); in a "
                "plain loop use ExponentialSchedule.apply and DensityController directly"
            )


class MaskTrainingCallback(_TrainerCallbackBase):
    """Anneal mask temperature and log L0 statistics in a ``transformers.Trainer``.

    ``schedule`` maps the step (``unit="step"``) or the number of finished epochs
    (``unit="epoch"``) to a temperature; it is applied at the start of training and
    after every step / epoch. On every log, ``mask_l0``, ``mask_density`` (expected
    in training) and ``mask_temperature`` are added to the logs and to the trainer's
    ``state.log_history``; with ``density_controller`` also its target and
    ``lambda_1``. ``history`` keeps ``(global_step, temperature)`` of every change.

    Args:
        schedule: Maps the step or epoch count to a temperature (``None``: leave it).
        unit: Whether ``schedule`` counts ``"step"``s or ``"epoch"``s.
        log_l0: Add the mask statistics to the trainer's logs.
        density_controller: A controller whose target and ``lambda_1`` are logged too.

    Examples:
        >>> from modeopt_masks.training import ExponentialSchedule, MaskTrainingCallback
        >>> cb = MaskTrainingCallback(ExponentialSchedule(1.0, 200.0, total=3), unit="epoch")
        >>> cb.unit, cb.history
        ('epoch', [])
    """

    def __init__(
        self,
        schedule: Callable[[float], float] | None = None,
        unit: Literal["step", "epoch"] = "epoch",
        log_l0: bool = True,
        density_controller: DensityController | None = None,
    ) -> None:
        super().__init__()  # without transformers, the stand-in base raises here
        if unit not in ("step", "epoch"):
            raise ValueError(f"unit must be 'step' or 'epoch', got {unit!r}")
        if schedule is not None and not callable(schedule):
            raise TypeError(f"schedule must be callable (t -> temperature), got {schedule!r}")
        self.schedule = schedule
        self.unit = unit
        self.log_l0 = log_l0
        self.density_controller = density_controller
        self.history: list[tuple[int, float]] = []
        self._epochs_done = 0

    def _anneal(self, model: nn.Module | None, t: float, step: int) -> None:
        if self.schedule is None:
            return
        if model is None:
            raise ValueError("MaskTrainingCallback needs the model (the Trainer passes model=)")
        temperature = float(self.schedule(t))
        set_temperature(model, temperature)
        self.history.append((int(step), temperature))

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._epochs_done = int(state.epoch or 0)
        t = state.global_step if self.unit == "step" else self._epochs_done
        self._anneal(kwargs.get("model"), t, state.global_step)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.unit == "step":
            self._anneal(kwargs.get("model"), state.global_step, state.global_step)

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._epochs_done += 1
        if self.unit == "epoch":
            self._anneal(kwargs.get("model"), self._epochs_done, state.global_step)

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any
    ) -> None:
        model = kwargs.get("model")
        if not self.log_l0 or model is None:
            return
        stats = l0_stats(model)
        extra: dict[str, float] = {
            "mask_l0": stats["total_l0"],
            "mask_density": stats["total_l0"] / max(stats["max_l0"], 1),
        }
        try:
            extra["mask_temperature"] = get_temperature(model)
        except ValueError:  # no temperature (magnitude pruning) or layers disagree
            pass
        if self.density_controller is not None:
            extra["density_target"] = self.density_controller.target()
            extra["density_lambda_1"] = float(self.density_controller.lambda_1)
        if logs is not None:
            logs.update(extra)
        if state.log_history:
            state.log_history[-1].update(extra)

