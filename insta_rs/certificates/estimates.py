"""Radius estimates R-hat: the scores that choose a sigma, not certificates (ALGORITHMS.md 2 and 4).

Both score a noise level sigma by the radius its draws suggest; neither is a certified radius, because
the same draws that pick the level also produce the score.

- ``estimated_radius``: the plug-in estimate Rhat = sigma * PhiInv(clamp(k / m, eps, 1 - eps)) of k
  successes (the true label, or the top class) out of m draws, eps = 1 / (2m) unless given. It is the
  objective of Insta-RS Train's sigma update (ALGORITHMS.md 4) and of the selector's ``best_radius`` labels.
- ``estimated_certified_radius``: Rhat = sigma * PhiInv(CP lower bound of k / m at alpha), -inf where that
  bound is < 1/2: the objective of the Insta-RS test-time search (ALGORITHMS.md 2) and of the selector's
  distillation check.

Pure numpy over scipy's inverse normal (``bounds.phi_inv``); sigma, successes (and the result) broadcast
together. Pass the sigma the noise was actually scaled by (float32 in ``Smooth``) when the score must match
the draws.
"""

from __future__ import annotations

import numpy as np

from .bounds import cp_lower, phi_inv


def estimated_radius(sigma, successes, trials: int, eps: float | None = None) -> np.ndarray:
    """sigma * PhiInv(clamp(successes / trials, eps, 1 - eps)), eps = 1 / (2 * trials) unless given: finite
    even when every draw (or none) succeeds, so a level that got all m draws right still ranks by sigma."""
    eps = 0.5 / trials if eps is None else float(eps)
    phat = np.clip(np.asarray(successes, dtype=np.float64) / trials, eps, 1.0 - eps)
    return np.asarray(sigma, dtype=np.float64) * phi_inv(phat)


def estimated_certified_radius(sigma, successes, trials: int, alpha: float) -> np.ndarray:
    """sigma * PhiInv(L), L the one-sided (1 - alpha) Clopper-Pearson lower bound of successes / trials;
    -inf where L < 1/2 (CERTIFY would abstain). What CERTIFY would report if these draws were fresh."""
    lower = cp_lower(successes, trials, alpha)
    with np.errstate(divide="ignore"):
        values = np.asarray(sigma, dtype=np.float64) * phi_inv(lower)
    return np.where(lower >= 0.5, values, -np.inf)
