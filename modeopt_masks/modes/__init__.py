"""The built-in modes; importing this package registers them."""

from . import (  # noqa: F401
    continuous_sparsification,
    gradnas,
    hard_concrete,
    magnitude_pruning,
    sparsegpt,
    wanda,
)
