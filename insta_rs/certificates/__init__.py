"""Confidence bounds and certified radii (ALGORITHMS.md sections 1 and 3, SOUND.md).

- ``bounds``: Clopper-Pearson bounds, Cohen's radius, PREDICT's test (section 1).
"""

from .bounds import (
    ABSTAIN,
    check_alpha,
    clopper_pearson_lower,
    clopper_pearson_upper,
    cohen_radius,
    floor_to,
    predict_is_confident,
)

__all__ = ["ABSTAIN", "check_alpha", "clopper_pearson_lower", "clopper_pearson_upper", "cohen_radius", "floor_to",
           "predict_is_confident"]
