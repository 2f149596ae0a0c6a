"""``DistillationTrainer``: recovery by distillation inside a ``transformers.Trainer``.

The same loss as :func:`modeopt_masks.distill` (:class:`~modeopt_masks.recovery.Distiller`):
logit KL from ``teacher`` at ``temperature``, optional hidden-state and LM terms. The
Trainer brings its own loop, optimiser (AdamW; ``learning_rate``, ``weight_decay``),
schedule, gradient clipping (``max_grad_norm``, over the model's parameters), logging and
checkpoints. A hidden-state projection (widths differ) joins the optimiser as an extra
parameter group. Mask-mode masks of a masked student stay hard and out of the optimiser
unless ``train_masks=True``. ``trainer.distill_history`` holds the loss parts of every
training step, as :class:`~modeopt_masks.recovery.DistillResult.history` does.

This module imports ``transformers.Trainer``; ``import modeopt_masks`` does not.

Examples:
    >>> import contextlib, io, torch, transformers, modeopt_masks as mm
    >>> cfg = transformers.LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32,
    ...     num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2)
    >>> _ = torch.manual_seed(0)
    >>> teacher, student = transformers.LlamaForCausalLM(cfg), transformers.LlamaForCausalLM(cfg)
    >>> data = [{"input_ids": torch.randint(0, 32, (8,))} for _ in range(4)]
    >>> args = transformers.TrainingArguments("/tmp/mm_distil_doctest", max_steps=2,
    ...     per_device_train_batch_size=2, report_to=[], disable_tqdm=True, save_strategy="no",
    ...     use_cpu=True, dataloader_pin_memory=False)
    >>> trainer = mm.DistillationTrainer(model=student, teacher=teacher, args=args,
    ...                                  train_dataset=data)
    >>> with contextlib.redirect_stdout(io.StringIO()):  # the Trainer prints its metrics
    ...     _ = trainer.train()
    >>> len(trainer.distill_history)
    2
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch.nn as nn
from transformers import Trainer

from .recovery import Distiller, mask_parameters


class DistillationTrainer(Trainer):
    """A ``Trainer`` whose loss is the distillation loss of ``model`` (the student) from
    ``teacher``; the other arguments are the Trainer's.

    Examples:
        >>> import modeopt_masks as mm
        >>> mm.DistillationTrainer.__mro__[1].__name__
        'Trainer'
    """

    def __init__(self, *args: Any, teacher: nn.Module, temperature: float = 1.0,
                 kl_weight: float = 1.0, hidden_weight: float = 0.0,
                 hidden_layers: Sequence[tuple[int, int]] = ((-1, -1),), lm_weight: float = 0.0,
                 projection: nn.Module | None = None, train_masks: bool = False,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.model is None:
            raise ValueError("DistillationTrainer needs the student as model=")
        self.teacher = teacher.to(self.args.device)
        self.distiller = Distiller(
            self.model, self.teacher, lr=self.args.learning_rate, temperature=temperature,
            kl_weight=kl_weight, hidden_weight=hidden_weight, hidden_layers=hidden_layers,
            lm_weight=lm_weight, projection=projection, train_masks=train_masks)
        self.distiller.criterion.to(self.args.device)
        self.train_masks = train_masks
        self.distill_history: list[dict[str, float]] = []

    def create_optimizer(self, model: Any = None) -> Any:  # noqa: D102
        optimizer = super().create_optimizer(model)
        extra = [p for p in self.distiller.criterion.parameters() if p.requires_grad]
        known = {id(p) for g in optimizer.param_groups for p in g["params"]}
        extra = [p for p in extra if id(p) not in known]
        if extra:
            optimizer.add_param_group({"params": extra, "weight_decay": 0.0})
        return optimizer

    def train(self, *args: Any, **kwargs: Any) -> Any:
        """``Trainer.train`` with the mask-mode masks out of the optimiser (unless
        ``train_masks``); their ``requires_grad`` is put back afterwards."""
        assert self.model is not None
        params = [] if self.train_masks else mask_parameters(self.model)
        flags = [p.requires_grad for p in params]
        try:
            for p in params:
                p.requires_grad_(False)
            return super().train(*args, **kwargs)
        finally:
            for p, flag in zip(params, flags, strict=True):
                p.requires_grad_(flag)

    def compute_loss(self, model: nn.Module, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        """The distillation loss of ``inputs`` (the teacher sees the same batch)."""
        distiller = self.distiller
        if model is not distiller.student:  # wrapped (DDP, compile): run the wrapper
            distiller.student = model
        parts = distiller.loss(inputs)
        if model.training:
            self.distill_history.append({k: float(v.detach()) for k, v in parts.items()})
        if return_outputs:
            return parts["loss"], {"loss": parts["loss"]}
        return parts["loss"]
