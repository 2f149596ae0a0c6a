"""The built-in modes; importing this package registers them."""

from . import continuous_sparsification, gradnas, hard_concrete, magnitude_pruning  # noqa: F401
from . import sparsegpt, wanda  # noqa: F401, E402  (one-shot calibrated modes)
