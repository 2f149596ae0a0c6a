"""Circuit and probing tools over residual-stream vectors (see DESIGN.md part 9)."""

from .residual_layouts import LAYOUTS, MODEL_TYPE_TO_FAMILY, HookPoint, ResidualLayout, layout_for
from .residual_update_model import ResidualUpdateModel, ResidualUpdateModelConfig

__all__ = [
    "LAYOUTS",
    "MODEL_TYPE_TO_FAMILY",
    "HookPoint",
    "ResidualLayout",
    "ResidualUpdateModel",
    "ResidualUpdateModelConfig",
    "layout_for",
]
