"""Recovery by distillation: train a pruned student to match its unpruned teacher.

Pruning costs quality; a short distillation from the dense model on unlabelled
text brings most of it back. Per token the loss is

* ``kl_weight * T^2 * KL(softmax(teacher / T) || softmax(student / T))`` (Hinton et al.;
  ``T`` is ``temperature``), averaged over the tokens the ``attention_mask`` keeps;
* plus ``hidden_weight`` times the MSE between chosen hidden states of student and
  teacher (``hidden_layers``: pairs of indices into ``output.hidden_states``, default the
  last one), divided by the teacher's mean square so that it is scale free. Where the
  widths differ (a hidden-size-pruned student), the student's states go through a learned
  linear projection, initialised by least squares on the first batch and trained with the
  student; equal widths compare directly (identity);
* plus ``lm_weight`` times the student's own loss on the batch's ``labels``.

Teacher and student see the same batch at every step; the teacher runs in eval mode
without gradients and is never changed. Three ways in:

* [`Distiller`][modeopt_masks.recovery.Distiller]: the step-level object (``loss(batch)``, ``step(batch)``, ``kl(batches)``);
* [`distill`][modeopt_masks.recovery.distill]: a plain loop with a progress bar, ``distill(student, teacher, batches,
  steps=100, lr=1e-4)``;
* ``DistillationTrainer`` ([`modeopt_masks.recovery_trainer`][modeopt_masks.recovery_trainer]): the same loss inside a
  ``transformers.Trainer``.

Works on exported models and on masked (converted, not yet exported) ones. On a masked
model the masks stay fixed by default: mask-mode masks (``continuous_sparsification``,
``hard_concrete``, ``magnitude_pruning``) are used hard and their parameters are left out
of the optimiser (``train_masks=True`` trains them too, soft, as in mask training); gradnas
unit masks are buffers and always stay. Pruned units get zero gradient, so distilling a
gradnas-masked model and exporting it afterwards gives the model that exporting first and
distilling then gives.

Bad input (no batch, a teacher and student of different vocabularies, the teacher passed as
its own student) raises before any weight changes. A loss that is not finite raises before
the step that would apply it; the steps before it stay applied.

Examples:
    >>> import torch, torch.nn as nn, modeopt_masks as mm
    >>> _ = torch.manual_seed(0)
    >>> teacher = nn.Sequential(nn.Embedding(10, 16), nn.Linear(16, 10))
    >>> student = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 10))
    >>> batches = [torch.randint(0, 10, (4, 6)) for _ in range(4)]
    >>> before = mm.kl_to_teacher(student, teacher, batches)
    >>> result = mm.distill(student, teacher, batches, steps=40, lr=1e-2, progress=False)
    >>> result.steps, mm.kl_to_teacher(student, teacher, batches) < before
    (40, True)
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from .masking import MaskTechnique, hard_masks
from .structured.scores import model_device, output_logits, run_model, to_device

#: the loss parts a step reports, in this order
LOSS_PARTS = ("loss", "kl", "hidden", "lm")


def _logits(output: Any, who: str) -> torch.Tensor:
    logits = output_logits(output)
    if logits is None:
        raise ValueError(f"distillation: the {who}'s output has no logits (a `.logits` field or a "
                         f"tensor output), got {type(output).__name__}")
    return logits


def per_token_kl(log_student: torch.Tensor, log_teacher: torch.Tensor) -> torch.Tensor:
    """``KL(teacher || student)`` per position from log-probabilities over the last dim.

    Examples:
        >>> import torch
        >>> from modeopt_masks.recovery import per_token_kl
        >>> p = torch.log_softmax(torch.randn(2, 5), -1)
        >>> per_token_kl(p, p).abs().max() < 1e-6
        tensor(True)
    """
    return F.kl_div(log_student, log_teacher, log_target=True, reduction="none").sum(-1)


def _hidden_states(output: Any, who: str) -> Sequence[torch.Tensor]:
    states = getattr(output, "hidden_states", None)
    if states is None and isinstance(output, Mapping):
        states = output.get("hidden_states")
    if states is None:
        raise ValueError(f"distillation: hidden_weight > 0 needs hidden states, but the {who}'s "
                         "output has none (batches must be dicts for a Hugging Face model, which "
                         "is then called with output_hidden_states=True)")
    return states


def _vocab_size(model: nn.Module) -> int | None:
    config = getattr(model, "config", None)
    size = getattr(config, "vocab_size", None)
    return size if isinstance(size, int) else None


def mask_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters of the mask-mode masks in ``model`` (empty for exported / gradnas models).

    Examples:
        >>> import torch.nn as nn, modeopt_masks as mm
        >>> from modeopt_masks.recovery import mask_parameters
        >>> net = mm.convert(nn.Sequential(nn.Linear(3, 2)), "continuous_sparsification")
        >>> [tuple(p.shape) for p in mask_parameters(net)]
        [(2, 3)]
    """
    seen: dict[int, nn.Parameter] = {}
    for module in model.modules():
        if isinstance(module, MaskTechnique):
            for p in module.parameters():
                seen.setdefault(id(p), p)
    return list(seen.values())


@contextmanager
def frozen_masks(model: nn.Module) -> Iterator[None]:
    """Within the block the model's mask-mode masks are hard and get no gradient.

    Examples:
        >>> import torch, torch.nn as nn, modeopt_masks as mm
        >>> from modeopt_masks.recovery import frozen_masks
        >>> net = mm.convert(nn.Sequential(nn.Linear(3, 2)), "continuous_sparsification")
        >>> with frozen_masks(net):
        ...     net(torch.randn(1, 3)).sum().backward()
        >>> net[0].weight_mask.training, net[0].weight.grad is not None
        (True, True)
    """
    params = mask_parameters(model)
    flags = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(False)
        with hard_masks(model):
            yield
    finally:
        for p, flag in zip(params, flags, strict=True):
            p.requires_grad_(flag)


class DistillationLoss(nn.Module):
    """The distillation loss of one batch, given the student's and the teacher's outputs.

    An ``nn.Module`` because the hidden-state projections (created when the widths first
    differ) are trained with the student. ``forward`` returns ``{"loss", "kl", "hidden",
    "lm"}`` (tensors; unused parts are zero).

    Args:
        temperature: Softmax temperature of the logit KL.
        kl_weight: Weight of ``KL(teacher || student)`` on the logits.
        hidden_weight: Weight of the hidden-state MSE (0: off).
        hidden_layers: ``(student index, teacher index)`` pairs into ``output.hidden_states``.
        lm_weight: Weight of the student's own language-model loss (needs ``labels``).
        projection: Maps student hidden states to the teacher's width (``None``: made when
            the widths differ).

    Raises:
        ValueError: For a temperature <= 0, a negative weight, all weights 0, or bad
            ``hidden_layers``.

    Examples:
        >>> import torch
        >>> from modeopt_masks.recovery import DistillationLoss
        >>> logits = torch.randn(2, 5, 7)
        >>> parts = DistillationLoss(temperature=2.0)(logits, logits, {})
        >>> float(parts["kl"]) < 1e-6
        True
    """

    def __init__(self, temperature: float = 1.0, kl_weight: float = 1.0, hidden_weight: float = 0.0,
                 hidden_layers: Sequence[tuple[int, int]] = ((-1, -1),), lm_weight: float = 0.0,
                 projection: nn.Module | None = None) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}")
        for name, weight in (("kl_weight", kl_weight), ("hidden_weight", hidden_weight),
                             ("lm_weight", lm_weight)):
            if not weight >= 0:
                raise ValueError(f"{name} must be >= 0, got {weight!r}")
        if kl_weight == hidden_weight == lm_weight == 0:
            raise ValueError("kl_weight, hidden_weight and lm_weight are all 0: nothing to train")
        pairs = [tuple(p) for p in hidden_layers]
        if not pairs or any(len(p) != 2 or not all(isinstance(i, int) for i in p) for p in pairs):
            raise ValueError("hidden_layers must be a non-empty list of (student index, teacher "
                             f"index) pairs into output.hidden_states, got {hidden_layers!r}")
        self.temperature = float(temperature)
        self.kl_weight = float(kl_weight)
        self.hidden_weight = float(hidden_weight)
        self.lm_weight = float(lm_weight)
        self.hidden_layers: list[tuple[int, int]] = pairs  # type: ignore[assignment]
        #: projection of student hidden states to the teacher's width (None: create on demand)
        self.projection = projection
        self._fitted = projection is not None

    @property
    def needs_hidden(self) -> bool:
        """Whether the models must return hidden states."""
        return self.hidden_weight > 0

    def ensure_projection(self, student_width: int, teacher_width: int,
                          device: torch.device | None = None, dtype: torch.dtype | None = None
                          ) -> None:
        """Create the student-to-teacher projection if the widths differ and none exists."""
        if self.projection is None and student_width != teacher_width:
            self.projection = nn.Linear(student_width, teacher_width, bias=False,
                                        device=device, dtype=dtype)
            self._fitted = False

    def _kl(self, student: torch.Tensor, teacher: torch.Tensor, weights: torch.Tensor | None
            ) -> torch.Tensor:
        t = self.temperature
        per_token = per_token_kl(F.log_softmax(student.float() / t, dim=-1),
                                 F.log_softmax(teacher.float() / t, dim=-1))
        if weights is None:
            return per_token.mean() * t * t
        return (per_token * weights).sum() / weights.sum().clamp_min(1.0) * t * t

    def _hidden(self, student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor],
                weights: torch.Tensor | None) -> torch.Tensor:
        terms = []
        for si, ti in self.hidden_layers:
            try:
                s, t = student[si].float(), teacher[ti].float()
            except IndexError:
                raise ValueError(f"hidden_layers pair ({si}, {ti}) is out of range: the student "
                                 f"has {len(student)} hidden states, the teacher {len(teacher)}"
                                 ) from None
            self.ensure_projection(s.shape[-1], t.shape[-1], s.device, s.dtype)
            if self.projection is not None:
                if not self._fitted:
                    self._fit_projection(s, t)
                s = self.projection(s)
            sq = (s - t).square().mean(-1)
            scale = t.detach().square().mean().clamp_min(1e-12)
            if weights is None:
                terms.append(sq.mean() / scale)
            else:
                terms.append((sq * weights).sum() / weights.sum().clamp_min(1.0) / scale)
        return torch.stack(terms).mean()

    def _fit_projection(self, s: torch.Tensor, t: torch.Tensor) -> None:
        """Least-squares start for a fresh linear projection (random starts cost many steps)."""
        assert isinstance(self.projection, nn.Linear)
        x = s.detach().reshape(-1, s.shape[-1]).double()
        y = t.detach().reshape(-1, t.shape[-1]).double()
        ridge = 1e-4 * x.square().mean().clamp_min(1e-12)
        gram = x.T @ x + ridge * x.shape[0] * torch.eye(x.shape[1], dtype=x.dtype, device=x.device)
        solution = torch.linalg.solve(gram, x.T @ y)  # [student width, teacher width]
        with torch.no_grad():
            self.projection.weight.copy_(solution.T.to(self.projection.weight.dtype))
        self._fitted = True

    def forward(self, student_out: Any, teacher_out: Any, batch: Any) -> dict[str, torch.Tensor]:  # noqa: D102
        s_logits, t_logits = _logits(student_out, "student"), _logits(teacher_out, "teacher")
        if s_logits.shape[-1] != t_logits.shape[-1]:
            raise ValueError(
                f"distillation: the student predicts {s_logits.shape[-1]} classes (vocabulary) "
                f"and the teacher {t_logits.shape[-1]}; the logit KL needs the same vocabulary")
        if s_logits.shape[:-1] != t_logits.shape[:-1]:
            raise ValueError(f"distillation: student logits {tuple(s_logits.shape)} and teacher "
                             f"logits {tuple(t_logits.shape)} do not line up")
        weights = None
        if isinstance(batch, Mapping) and isinstance(batch.get("attention_mask"), torch.Tensor):
            mask = batch["attention_mask"]
            if mask.shape == s_logits.shape[:-1]:
                weights = mask.to(torch.float32)
        zero = s_logits.new_zeros((), dtype=torch.float32)
        parts = {"kl": zero, "hidden": zero, "lm": zero}
        if self.kl_weight > 0:
            parts["kl"] = self._kl(s_logits, t_logits.detach(), weights)
        if self.needs_hidden:
            parts["hidden"] = self._hidden(_hidden_states(student_out, "student"),
                                           [h.detach() for h in
                                            _hidden_states(teacher_out, "teacher")], weights)
        if self.lm_weight > 0:
            lm = getattr(student_out, "loss", None)
            if lm is None:
                raise ValueError("distillation: lm_weight > 0 needs the student's own loss: give "
                                 "the batches labels (a Hugging Face model then returns .loss)")
            parts["lm"] = lm.float()
        parts["loss"] = (self.kl_weight * parts["kl"] + self.hidden_weight * parts["hidden"]
                         + self.lm_weight * parts["lm"])
        return parts


def _inputs(batch: Any, keep_labels: bool, hidden: bool, collect_func: Callable[[Any], Any] | None
            ) -> Any:
    if collect_func is not None:
        return collect_func(batch)
    if isinstance(batch, Mapping):
        inputs = {k: v for k, v in batch.items() if keep_labels or k != "labels"}
        if hidden:
            inputs["output_hidden_states"] = True
        return inputs
    return batch


class Distiller:
    """Distil ``student`` from ``teacher`` step by step: ``step(batch)`` trains on one batch.

    The loss options are those of [`DistillationLoss`][modeopt_masks.recovery.DistillationLoss];
    see also the module docstring.

    Args:
        student: The pruned model that trains.
        teacher: The unpruned model (frozen, eval mode).
        lr: Learning rate of the default optimiser.
        temperature: Softmax temperature of the logit KL.
        kl_weight: Weight of ``KL(teacher || student)`` on the logits.
        hidden_weight: Weight of the hidden-state MSE (0: off).
        hidden_layers: ``(student index, teacher index)`` pairs into ``output.hidden_states``.
        lm_weight: Weight of the student's own language-model loss (needs ``labels``).
        projection: Maps student hidden states to the teacher's width (``None``: made when
            the widths differ).
        optimizer: A ``torch.optim.Optimizer`` class or factory ``f(params)`` (``None``:
            ``AdamW`` with ``lr`` and no weight decay, as ``transformers.Trainer``).
        max_grad_norm: Clip the gradient norm to this (``None``: no clipping; 1.0 as the
            Trainer's default).
        train_masks: Train the student's masks too (default: frozen).
        collect_func: ``collect_func(batch)`` gives the model input (default: the batch,
            dicts as keyword arguments, ``labels`` dropped unless ``lm_weight`` > 0).

    Raises:
        ValueError: When the student is the teacher, the vocabularies differ, or an option
            is out of range.

    Examples:
        >>> import torch, torch.nn as nn
        >>> from modeopt_masks.recovery import Distiller
        >>> _ = torch.manual_seed(0)
        >>> teacher, student = nn.Linear(4, 3), nn.Linear(4, 3)
        >>> d = Distiller(student, teacher, lr=0.05)
        >>> x = torch.randn(16, 4)
        >>> first = d.step(x)["kl"]
        >>> for _ in range(30):
        ...     last = d.step(x)["kl"]
        >>> last < first
        True
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, *, lr: float = 1e-4,
                 temperature: float = 1.0, kl_weight: float = 1.0, hidden_weight: float = 0.0,
                 hidden_layers: Sequence[tuple[int, int]] = ((-1, -1),), lm_weight: float = 0.0,
                 projection: nn.Module | None = None,
                 optimizer: Callable[..., torch.optim.Optimizer] | None = None,
                 max_grad_norm: float | None = 1.0, train_masks: bool = False,
                 collect_func: Callable[[Any], Any] | None = None) -> None:
        if student is teacher:
            raise ValueError("distillation: the student is the teacher (the same object); "
                             "distil a pruned copy from the unpruned model")
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr!r}")
        if max_grad_norm is not None and not max_grad_norm > 0:
            raise ValueError(f"max_grad_norm must be > 0 or None, got {max_grad_norm!r}")
        s_vocab, t_vocab = _vocab_size(student), _vocab_size(teacher)
        if s_vocab is not None and t_vocab is not None and s_vocab != t_vocab:
            raise ValueError(f"distillation: the student's vocabulary has {s_vocab} tokens and "
                             f"the teacher's {t_vocab}; the logit KL needs the same vocabulary")
        self.student, self.teacher = student, teacher
        self.criterion = DistillationLoss(temperature, kl_weight, hidden_weight, hidden_layers,
                                          lm_weight, projection)
        if self.criterion.needs_hidden:
            widths = [getattr(getattr(m, "config", None), "hidden_size", None)
                      for m in (student, teacher)]
            s_width, t_width = widths
            if isinstance(s_width, int) and isinstance(t_width, int):
                self.criterion.ensure_projection(s_width, t_width, device=model_device(student))
        self.lr = lr
        self.max_grad_norm = max_grad_norm
        self.train_masks = train_masks
        self.collect_func = collect_func
        self._make_optimizer = optimizer
        self.optimizer: torch.optim.Optimizer | None = None
        self.steps = 0

    def trainable_parameters(self) -> list[nn.Parameter]:
        """What the optimiser updates: the student's trainable weights (masks only with
        ``train_masks``) and the hidden-state projection."""
        masks = set() if self.train_masks else {id(p) for p in mask_parameters(self.student)}
        params = [p for p in self.student.parameters() if p.requires_grad and id(p) not in masks]
        return params + [p for p in self.criterion.parameters() if p.requires_grad]

    def _build_optimizer(self) -> torch.optim.Optimizer:
        params = self.trainable_parameters()
        if not params:
            raise ValueError("distillation: the student has no trainable parameter")
        if self._make_optimizer is None:
            return torch.optim.AdamW(params, lr=self.lr, weight_decay=0.0)
        return self._make_optimizer(params)

    @contextmanager
    def _student_context(self) -> Iterator[None]:
        with ExitStack() as stack:
            if not self.train_masks:
                stack.enter_context(frozen_masks(self.student))
            yield

    def teacher_output(self, batch: Any) -> Any:
        """The teacher's output on ``batch`` (eval mode, no gradients)."""
        was = self.teacher.training
        self.teacher.eval()
        try:
            with torch.no_grad():
                batch = to_device(batch, model_device(self.teacher))
                inputs = _inputs(batch, False, self.criterion.needs_hidden, self.collect_func)
                return run_model(self.teacher, inputs)
        finally:
            self.teacher.train(was)

    def loss(self, batch: Any) -> dict[str, torch.Tensor]:
        """The loss parts on ``batch`` with the student's graph (call ``.backward()`` yourself)."""
        teacher_out = self.teacher_output(batch)
        batch = to_device(batch, model_device(self.student))
        inputs = _inputs(batch, self.criterion.lm_weight > 0, self.criterion.needs_hidden,
                         self.collect_func)
        with self._student_context():
            student_out = run_model(self.student, inputs)
        return self.criterion(student_out, to_device(teacher_out, model_device(self.student)), batch)

    def step(self, batch: Any) -> dict[str, float]:
        """One optimiser step on ``batch`` (student in train mode); the loss parts as floats."""
        self.student.train()
        with self._student_context():
            parts = self.loss(batch)
            loss = parts["loss"]
            if not bool(torch.isfinite(loss)):
                raise ValueError(f"distillation: the loss is {float(loss)} at step {self.steps + 1} "
                                 "(not finite); lower lr, or train in float32")
            if self.optimizer is None:  # after the first loss: a lazily made projection is in
                self.optimizer = self._build_optimizer()
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.max_grad_norm is not None:
                params = [p for g in self.optimizer.param_groups for p in g["params"]]
                torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm)
            self.optimizer.step()
        self.steps += 1
        return {k: float(parts[k].detach()) for k in LOSS_PARTS}

    def kl(self, batches: Iterable[Any]) -> float:
        """Mean per-token ``KL(teacher || student)`` at temperature 1 over ``batches`` (eval)."""
        return kl_to_teacher(self.student, self.teacher, batches, self.collect_func)


def kl_to_teacher(student: nn.Module, teacher: nn.Module, batches: Iterable[Any],
                  collect_func: Callable[[Any], Any] | None = None) -> float:
    """Mean per-token ``KL(teacher || student)`` (temperature 1, eval mode, no gradients).

    Args:
        student: The pruned model.
        teacher: The unpruned model.
        batches: Evaluation batches.
        collect_func: ``collect_func(batch)`` gives the model input.

    Returns:
        The mean per-token KL divergence.

    Examples:
        >>> import torch, torch.nn as nn
        >>> from modeopt_masks.recovery import kl_to_teacher
        >>> net = nn.Linear(3, 4)
        >>> kl_to_teacher(net, net, [torch.randn(2, 3)]) < 1e-6
        True
    """
    criterion = DistillationLoss()
    total, count = 0.0, 0
    modes = [(m, m.training) for m in (student, teacher)]
    try:
        for m, _ in modes:
            m.eval()
        with torch.no_grad():
            for batch in batches:
                outs = [run_model(m, _inputs(to_device(batch, model_device(m)), False, False,
                                             collect_func)) for m in (student, teacher)]
                total += float(criterion(outs[0], to_device(outs[1], model_device(student)),
                                         to_device(batch, model_device(student)))["kl"])
                count += 1
    finally:
        for m, was in modes:
            m.train(was)
    if count == 0:
        raise ValueError("kl_to_teacher: the batches gave no batch")
    return total / count


@dataclass
class DistillResult:
    """What [`distill`][modeopt_masks.recovery.distill] did: the loss parts per step, the steps taken, the wall time.

    Args:
        history: Per step, the loss parts (``loss``, ``kl``, ``hidden``, ``lm``).
        steps: The steps taken.
        seconds: The wall time.
    """

    history: list[dict[str, float]] = field(default_factory=list)
    steps: int = 0
    seconds: float = 0.0

    @property
    def steps_per_s(self) -> float:
        """Training steps per second of wall time."""
        return self.steps / self.seconds if self.seconds > 0 else float("nan")


def _cycle(batches: Iterable[Any], steps: int | None) -> Iterator[Any]:
    """The batches, repeated until ``steps`` (``None``: one pass). A one-shot iterator that
    runs out ends early (with a warning)."""
    given = 0
    while True:
        epoch = 0
        for batch in batches:
            if steps is not None and given >= steps:
                return
            yield batch
            given += 1
            epoch += 1
        if steps is None or given >= steps:
            return
        if epoch == 0 or iter(batches) is batches:  # type: ignore[call-overload]
            if given:
                warnings.warn(f"distill: the batches ran out after {given} of {steps} steps "
                              "(a one-shot iterator); pass a list to repeat them", stacklevel=3)
            return


def distill(student: nn.Module, teacher: nn.Module, batches: Iterable[Any],
            steps: int | None = None, lr: float = 1e-4, *, progress: bool = True,
            **options: Any) -> DistillResult:
    """Distil ``student`` from ``teacher`` over ``batches`` for ``steps`` steps (``None``: one
    pass; more steps than batches repeat them). Returns a [`DistillResult`][modeopt_masks.recovery.DistillResult].

    ``options`` go to [`Distiller`][modeopt_masks.recovery.Distiller] (``temperature``, ``hidden_weight``,
    ``hidden_layers``, ``lm_weight``, ``kl_weight``, ``projection``, ``optimizer``,
    ``max_grad_norm``, ``train_masks``, ``collect_func``). The student is put back in its
    previous train/eval mode.

    Args:
        student: The pruned model that trains.
        teacher: The unpruned model.
        batches: Training batches (repeated when ``steps`` exceeds them).
        steps: Optimiser steps (``None``: one pass over ``batches``).
        lr: Learning rate.
        progress: Show a progress bar.
        **options: [`Distiller`][modeopt_masks.recovery.Distiller] options.

    Returns:
        The [`DistillResult`][modeopt_masks.recovery.DistillResult].

    Examples:
        >>> import torch, torch.nn as nn, modeopt_masks as mm
        >>> mm.distill(nn.Linear(2, 2), nn.Linear(2, 2), [], progress=False)
        Traceback (most recent call last):
        ...
        ValueError: distill: the batches gave no batch (nothing to train on)
    """
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise ValueError(f"steps must be a positive integer or None, got {steps!r}")
    distiller = Distiller(student, teacher, lr=lr, **options)
    result = DistillResult()
    was_training = student.training
    start = time.perf_counter()
    try:
        bar = tqdm(_cycle(batches, steps), total=steps if steps is not None else (
            len(batches) if hasattr(batches, "__len__") else None),  # type: ignore[arg-type]
            desc="distil", disable=not progress)
        for batch in bar:
            parts = distiller.step(batch)
            result.history.append(parts)
            if progress:
                bar.set_postfix(loss=f"{parts['loss']:.4g}", refresh=False)
    finally:
        student.train(was_training)
    result.steps = distiller.steps
    result.seconds = time.perf_counter() - start
    if result.steps == 0:
        raise ValueError("distill: the batches gave no batch (nothing to train on)")
    return result
