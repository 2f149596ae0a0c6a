"""NeuroSurgeon's ``ResidualUpdateModel``: the library's, taking NeuroSurgeon's config.

Examples:
    >>> import torch, transformers
    >>> from modeopt_masks.compat.neurosurgeon.Probing.residual_update_model import (
    ...     ResidualUpdateModel)
    >>> from modeopt_masks.compat.neurosurgeon.Probing.probe_configs import (
    ...     ResidualUpdateModelConfig)
    >>> gpt = transformers.GPT2Model(transformers.GPT2Config(
    ...     n_embd=16, n_layer=2, n_head=2, vocab_size=20, n_positions=8))
    >>> rum = ResidualUpdateModel(ResidualUpdateModelConfig("gpt", [0, 1], True, True), gpt)
    >>> _ = rum(input_ids=torch.tensor([[1, 2]])); sorted(rum.vector_cache)[:2]
    ['attn_update_0', 'attn_update_1']
"""

from __future__ import annotations

from typing import Any

import torch.nn as nn

from ....probing import ResidualUpdateModel as CoreResidualUpdateModel
from .probe_configs import ResidualUpdateModelConfig


class ResidualUpdateModel(CoreResidualUpdateModel):
    """Caches residual updates/streams; ``config`` may be NeuroSurgeon's config.

    Examples:
        >>> from modeopt_masks.compat.neurosurgeon.Probing.residual_update_model import (
        ...     ResidualUpdateModel)
        >>> ResidualUpdateModel.__mro__[1].__name__
        'ResidualUpdateModel'
    """

    def __init__(self, config: ResidualUpdateModelConfig | Any, model: nn.Module) -> None:
        if isinstance(config, ResidualUpdateModelConfig):
            config = config.to_core(model)
        super().__init__(config, model)
