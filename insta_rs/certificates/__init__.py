"""Confidence bounds and certified radii (ALGORITHMS.md sections 1 and 3, SOUND.md).

- ``bounds``: Clopper-Pearson bounds, Cohen's radius, PREDICT's test (section 1).
- ``finite_set``: the cascade and best-level radii over fixed noise levels and their alpha split (SOUND.md 3a).
- ``memory``: memory-based consistency over the processed rows (ALGORITHMS.md 3b; guarantee ``memory``).
- ``semi_elastic``: the sound radius of an r-semi-elastic sigma(x) (SOUND.md 3c).
- ``selector``: the switch radii and the radius of the selector's answer rule (README "Guarantees" 3f).
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
from .finite_set import (
    LevelCertificate,
    best_level_radius,
    cascade_radius,
    cp_lower,
    cp_upper,
    level_bounds,
    statement_alpha,
)
from .memory import memory_consistency
from .semi_elastic import semi_elastic_radius, sigma_interval, worst_case_other_probability, worst_case_over_interval

__all__ = ["ABSTAIN", "LevelCertificate", "best_level_radius", "cascade_radius", "check_alpha",
           "clopper_pearson_lower", "clopper_pearson_upper", "cohen_radius", "cp_lower", "cp_upper", "floor_to",
           "level_bounds", "memory_consistency", "predict_is_confident", "semi_elastic_radius", "sigma_interval",
           "statement_alpha", "worst_case_other_probability", "worst_case_over_interval"]
