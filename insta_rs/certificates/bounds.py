"""Confidence bounds and certified radii: the statistics of randomized smoothing.

Pure functions over plain numbers, each a one-liner over scipy so it can be checked by eye.
ALGORITHMS.md section 1 (Cohen et al. 2019) defines them; SOUND.md the instance-wise variants.

Honesty rule: every function here errs on the side of a *smaller* radius. Radii written to
files are rounded down (``floor_to``), never to the nearest value, so a printed radius is never
larger than the one the bound supports.
"""

from __future__ import annotations

import math

import numpy as np

from scipy.stats import beta, binomtest, norm

from ..errors import check

ABSTAIN = -1
"""The class index a smoothed classifier returns when it abstains."""


def check_alpha(alpha: float, setting: str = "alpha") -> None:
    check(isinstance(alpha, (int, float)) and 0.0 < alpha < 1.0, setting, alpha, "a number in (0, 1), e.g. 0.001")


def clopper_pearson_lower(successes: int, trials: int, alpha: float) -> float:
    """One-sided (1 - alpha) Clopper-Pearson lower bound on a binomial proportion.

    Equals the alpha-quantile of Beta(k, n - k + 1); 0 when k = 0 (ALGORITHMS.md 1, step 3).
    """
    _check_counts(successes, trials)
    return float(cp_lower(successes, trials, alpha))


def clopper_pearson_upper(successes: int, trials: int, alpha: float) -> float:
    """One-sided (1 - alpha) Clopper-Pearson upper bound: the (1 - alpha)-quantile of Beta(k + 1, n - k); 1 when k = n."""
    _check_counts(successes, trials)
    return float(cp_upper(successes, trials, alpha))

def cp_lower(successes, trials: int, alpha: float) -> np.ndarray:
    """Vectorised one-sided (1 - alpha) Clopper-Pearson lower bound: Beta(alpha; k, n - k + 1), 0 at k = 0."""
    k = np.asarray(successes, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = beta.ppf(alpha, np.maximum(k, 1.0), trials - k + 1.0)
    return np.where(k > 0, out, 0.0)

def cp_upper(successes, trials: int, alpha: float) -> np.ndarray:
    """Vectorised one-sided (1 - alpha) Clopper-Pearson upper bound: Beta(1 - alpha; k + 1, n - k), 1 at k = n."""
    k = np.asarray(successes, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = beta.ppf(1.0 - alpha, k + 1.0, np.maximum(trials - k, 1.0))
    return np.where(k < trials, out, 1.0)


def phi_inv(p):
    """PhiInv(p), the standard normal's inverse CDF (scipy's ``norm.ppf``), elementwise: -inf at 0, +inf at 1.
    The library's one inverse normal over numpy (the training losses take torch's, on tensors)."""
    return norm.ppf(p)


def cohen_radius(sigma: float, p_lower: float) -> float:
    """Certified L2 radius sigma * PhiInv(pA_lower) of Cohen et al.; 0 when pA_lower <= 1/2 (abstain)."""
    if not p_lower > 0.5:
        return 0.0
    return float(sigma * phi_inv(p_lower))


def predict_is_confident(top_count: int, runner_up_count: int, alpha: float) -> bool:
    """PREDICT's test: the two-sided binomial test of c1 out of c1 + c2 at p = 1/2 has p-value <= alpha."""
    total = top_count + runner_up_count
    if total == 0:
        return False
    return binomtest(top_count, total, 0.5).pvalue <= alpha


def floor_to(value: float, decimals: int = 6) -> float:
    """Round down to ``decimals`` places, so a rounded radius or lower bound never exceeds the exact one.

    The result is k / 10**decimals for an integer k (a value a file writes back exactly). ``value * scale``
    and ``k / scale`` are each rounded to the nearest float, which can land one unit in the last place
    above ``value`` (2.9300829999999998 * 1e6 rounds to 2930083.0); then k steps down until the result no
    longer exceeds ``value``."""
    if not math.isfinite(value):
        return value
    scale = 10**decimals
    k = math.floor(value * scale)
    result = k / scale
    while result > value:
        k -= 1
        result = k / scale
    return result


def _check_counts(successes: int, trials: int) -> None:
    if trials < 1 or not 0 <= successes <= trials:
        raise ValueError(f"binomial counts out of range: successes={successes}, trials={trials}")
