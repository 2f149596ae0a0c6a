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


def _active_techniques(model: nn.Module) -> tuple[list[Any], int]:
    """The masks of the model's active masked layers and their number of entries."""
    techniques = [
        tech for layer in masked_modules(model).values() if layer.use_masks
        for _, tech in layer._mask_modules()
    ]
    if not techniques:
        raise ValueError("the model has no active masked layers: convert it with a mask mode first")
    return techniques, sum(math.prod(t.shape) for t in techniques)


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
    techniques, total = _active_techniques(model)
    l0 = torch.stack([full_value(t.l0()).float() for t in techniques]).sum()
    return l0 / total


def hard_density(model: nn.Module) -> torch.Tensor:
    """Active masks' hard kept fraction: the share of entries in the eval circuit (no gradient).

    This is the density the model has after ``model.eval()`` (or [`export`][modeopt_masks.conversion.export]),
    whatever the masks' training-time distribution: for hard concrete the expected L0
    counts gates with ``log_alpha`` slightly below 0, which the eval circuit drops.

    Args:
        model: A model with active masks (or one defining ``hard_density()``).

    Returns:
        A scalar tensor in ``[0, 1]``, detached.

    Examples:
        >>> import torch.nn as nn, modeopt_masks as mm
        >>> from modeopt_masks.training import hard_density
        >>> net = mm.convert(nn.Sequential(nn.Linear(10, 10)), "magnitude_pruning")
        >>> float(hard_density(net))
        0.5
    """
    own = getattr(model, "hard_density", None)
    if callable(own):
        return own().detach()
    if callable(getattr(model, "expected_density", None)):
        return expected_density(model).detach()
    techniques, total = _active_techniques(model)
    kept = torch.stack([full_value(t.circuit()).float().sum() for t in techniques]).sum()
    return kept / total


#: bound on the integral term: past it the penalty dominates any task loss anyway, and the
#: bound keeps a run whose masks cannot move (a frozen optimiser) from overflowing to NaN
LAMBDA_LIMIT = 1e6


class DensityController(nn.Module):
    """Keep ``target_density`` of the mask entries: a PI controller on the hard density.

    ``controller(model)`` returns ``c * (d - t)`` for the expected density ``d``
    ([`expected_density`][modeopt_masks.training.expected_density], differentiable), the current target ``t`` and a
    control signal ``c = lambda_1 + gain * (h - t)`` computed from the *hard*
    density ``h`` ([`hard_density`][modeopt_masks.training.hard_density], the fraction the eval circuit keeps); add it
    to the task loss in place of ``l0_lambda * L0``. In training (module in train mode,
    grad enabled) each call then updates the integral ``lambda_1 += lr * (h - t)``;
    no separate optimiser or ``step()`` call is needed (works unchanged in the HF
    ``Trainer`` through ``CircuitModel(..., density_controller=...)``).

    Why this form: with Adam the masks move at a rate set by the optimiser's learning
    rate once the penalty dominates, so a multiplier that has grown while the density
    was far from the target (integral wind-up) drives it far past the target (to 0
    of all weights) before it unwinds. Three things prevent that, and the defaults
    land on the target within a couple of points in a plain loop and in the
    ``Trainer`` (tested at 5%, 20% and 30%):

    * the target moves linearly from the density at the first call to
      ``target_density`` over ``warmup_steps`` (default 100; CoFi's warm-up), so the
      gap stays small;
    * ``lambda_1`` is reset to 0 whenever the hard gap changes sign (anti-wind-up);
    * the controller steers the hard density, not the expected one, so the eval
      circuit is what lands on the target (hard concrete's expected L0 can be many
      points above its eval circuit).

    The multipliers are buffers (saved in ``state_dict``), never seen by the model's
    optimiser. Magnitude-pruning masks are fixed, so they cannot be controlled.

    With few mask units (a few heads or edges) the hard density moves in large steps and
    the hard-density controller overshoots; ``steer="expected"`` then uses CoFi's smooth
    Lagrangian ``lambda_1 (d - t) + lambda_2 (d - t)^2`` on the expected density, both
    multipliers by gradient ascent (``lr``; ``lambda_2`` starts at ``lambda_2_init``; no
    reset, no ``gain``), e.g. ``DensityController(t, steer="expected", lr=1.0,
    lambda_2_init=10.0, warmup_steps=0)`` for head masks.

    Args:
        target_density: The fraction of mask entries to keep, in ``[0, 1]``.
        lr: Rate of the integral term (relative growth per step and unit of gap with
            ``steer="hard"``; the multipliers' ascent step with ``"expected"``).
        gain: Proportional gain on the hard gap (``steer="hard"`` only).
        warmup_steps: Steps over which the target moves from the first density to
            ``target_density`` (default 100; 0: at once).
        steer: ``"hard"`` (default) steers the eval circuit's density; ``"expected"``
            CoFi's Lagrangian on the expected density (for a few coarse units).
        lambda_2_init: Initial quadratic multiplier (``steer="expected"`` only).

    Examples:
        >>> import torch, torch.nn as nn, modeopt_masks as mm
        >>> from modeopt_masks.training import DensityController
        >>> net = mm.convert(nn.Sequential(nn.Linear(4, 4)), "continuous_sparsification")
        >>> with torch.no_grad():
        ...     _ = net[0].weight_mask.logits.fill_(0.1)    # all kept: hard density 1
        >>> ctrl = DensityController(target_density=0.25, lr=1.0, gain=2.0, warmup_steps=0)
        >>> penalty = ctrl(net)   # c = 0 + 2 * (1 - 0.25) = 1.5, then lambda_1 = 0.75
        >>> round(ctrl.lambda_1.item(), 2), ctrl.last_hard_density
        (0.75, 1.0)
    """

    lambda_1: torch.Tensor
    lambda_2: torch.Tensor
    steps: torch.Tensor
    initial_density: torch.Tensor
    last_gap: torch.Tensor

    def __init__(
        self,
        target_density: float,
        lr: float = 1.0,
        gain: float = 10.0,
        warmup_steps: int = 100,
        steer: Literal["hard", "expected"] = "hard",
        lambda_2_init: float = 0.0,
    ) -> None:
        super().__init__()
        if not 0.0 <= target_density <= 1.0:
            raise ValueError(f"target_density is a fraction in [0, 1], got {target_density}")
        if not (math.isfinite(lr) and lr > 0):
            raise ValueError(f"lr must be positive and finite, got {lr}")
        if not (math.isfinite(gain) and gain >= 0):
            raise ValueError(f"gain must be >= 0 and finite, got {gain}")
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
        if steer not in ("hard", "expected"):
            raise ValueError(f"steer is 'hard' or 'expected', got {steer!r}")
        if not (math.isfinite(lambda_2_init) and lambda_2_init >= 0):
            raise ValueError(f"lambda_2_init must be >= 0 and finite, got {lambda_2_init}")
        self.steer = steer
        self.target_density = float(target_density)
        self.lr = float(lr)
        self.gain = float(gain)
        self.warmup_steps = int(warmup_steps)
        self.register_buffer("lambda_1", torch.zeros((), dtype=torch.float64))
        self.register_buffer("lambda_2", torch.full((), float(lambda_2_init), dtype=torch.float64))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        self.register_buffer("initial_density", torch.full((), float("nan"), dtype=torch.float64))
        self.register_buffer("last_gap", torch.zeros((), dtype=torch.float64))
        self._last_density: torch.Tensor | None = None
        self._last_hard: torch.Tensor | None = None

    @property
    def last_density(self) -> float | None:
        """The expected density of the last call (``None`` before the first)."""
        return None if self._last_density is None else float(self._last_density)

    @property
    def last_hard_density(self) -> float | None:
        """The hard (eval-circuit) density of the last call (``None`` before the first)."""
        return None if self._last_hard is None else float(self._last_hard)

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
        hard = hard_density(model).to(self.initial_density)
        self.initial_density.copy_(
            torch.where(torch.isnan(self.initial_density), hard, self.initial_density)
        )
        target = self._target_tensor()
        self._last_density = density.detach()
        self._last_hard = hard
        if self.steer == "expected":
            return self._lagrangian(density, target)
        hard_gap = hard - target
        control = self.lambda_1 + self.gain * hard_gap
        penalty = control.to(density) * (density - target.to(density))
        if self.training and torch.is_grad_enabled():
            crossed = torch.sign(hard_gap) * torch.sign(self.last_gap) < 0
            self.lambda_1.copy_(torch.where(crossed, torch.zeros_like(self.lambda_1), self.lambda_1))
            # multiplicative: the pressure needed depends on the model size and the
            # optimiser, so it grows geometrically while the gap keeps its sign
            self.lambda_1.add_(self.lr * hard_gap * (1.0 + self.lambda_1.abs()))
            self.lambda_1.clamp_(-LAMBDA_LIMIT, LAMBDA_LIMIT)
            self.last_gap.copy_(hard_gap)
            self.steps.add_(1)
        return penalty

    def _lagrangian(self, density: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        # steer="expected": CoFi's ``lambda_1 (d - t) + lambda_2 (d - t)^2`` on the smooth
        # expected density, both multipliers by gradient ascent
        gap = density - target.to(density)
        penalty = self.lambda_1.to(density) * gap + self.lambda_2.to(density) * gap * gap
        if self.training and torch.is_grad_enabled():
            g = gap.detach().to(self.lambda_1)
            self.lambda_1.add_(self.lr * g)
            self.lambda_2.add_(self.lr * g * g)
            self.steps.add_(1)
        return penalty

    def extra_repr(self) -> str:
        return (
            f"target_density={self.target_density}, steer={self.steer!r}, lr={self.lr}, gain={self.gain}, "
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

