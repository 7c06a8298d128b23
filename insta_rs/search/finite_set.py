"""Instance-wise noise levels from a finite set, with sound certificates (ALGORITHMS.md 3a, SOUND.md 3a).

Fixed levels sigma_1 > ... > sigma_K (any order in the config; sorted descending here) and a threshold
p0 in [1/2, 1). At one input, every level gets n0 selection draws (its candidate class) and n fresh
estimation draws (the counts of every class), as in CERTIFY; the bounds and their alpha split are in
``insta_rs.certificates.finite_set`` (all K*(C+1) statements hold together with probability >= 1 - alpha).

- ``CascadeSigma`` (``cascade``): answer with the first confident level from the top (Jeong & Shin 2023).
- ``BestLevelSigma`` (``grid``): answer with the confident level of largest radius term: the Insta-RS idea
  on a finite grid, certified for whatever confident level the rule could pick near x.

Sampling: all K levels of one input are sampled together, one ``sample_counts`` call for the selection
draws of every level and one for the estimation draws (per-row sigma), for both rules. The cascade only
needs the levels down to the one it stops at; sampling them all is the simple choice (one batched sweep
instead of up to K sequential ones) and costs the draws of the levels below the stopping level. Sampling
fewer levels would not change validity (the Bonferroni family covers every level whether it is used or
not).

Row columns: ``sigma`` is the answering level's sigma (the largest level when none is confident),
``pA_lower`` its lower bound; extra columns ``level`` (index in the descending level list, -1 none) and
``limited_by`` (``lower@k``: the answering level's own bound; ``upper@k``: another class could become
confident at level k; ``none``: no confident level). ``search_draws`` = (K - 1) (n0 + n): the draws beyond
one fixed-sigma CERTIFY. ``search_time`` is 0: all levels share the same forward passes, so the row's
``time`` holds the whole cost.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..certificates import ABSTAIN
from ..certificates.finite_set import LevelCertificate, best_level_radius, cascade_radius, level_bounds
from ..errors import check
from ..smoothing import Smooth, check_certify_settings, noise_sigma
from .base import RowResult, SigmaMethod


class _FiniteLevels(SigmaMethod):
    guarantee = "sound"
    extra_columns = ("level", "limited_by")

    def __init__(self, levels=(1.0, 0.5, 0.25), p0: float = 0.5):
        levels = list(levels) if hasattr(levels, "__iter__") and not isinstance(levels, str) else levels
        ok = isinstance(levels, list) and len(levels) >= 1 and all(
            isinstance(s, (int, float)) and not isinstance(s, bool) and math.isfinite(s) and s > 0 for s in levels)
        check(ok and len(set(float(s) for s in levels)) == len(levels), "sigma_search.levels", levels,
              "a non-empty list of distinct numbers > 0, e.g. [1.0, 0.5, 0.25]")
        check(isinstance(p0, (int, float)) and not isinstance(p0, bool) and 0.5 <= p0 < 1, "sigma_search.p0", p0,
              "a number in [0.5, 1)")
        self.levels = sorted((float(s) for s in levels), reverse=True)
        self.p0 = float(p0)

    def rule(self, levels, candidates, p_lower, p_upper) -> LevelCertificate:
        raise NotImplementedError

    def level_counts(self, smooth: Smooth, x: torch.Tensor, n0: int, n: int,
                     generator: torch.Generator | None) -> tuple[np.ndarray, np.ndarray]:
        """(candidates (K,), estimation counts (K, C)) at every level: the n0 selection draws of all levels
        in one call, then the n estimation draws of all levels in one call, both from ``generator``."""
        rows = x.unsqueeze(0).expand(len(self.levels), *x.shape)
        sigmas = torch.tensor(self.levels, dtype=torch.float32)
        selection = smooth.sample_counts(rows, sigmas, n0, generator)
        estimation = smooth.sample_counts(rows, sigmas, n, generator)
        return selection.argmax(dim=1).cpu().numpy(), estimation.cpu().numpy()

    def certify(self, smooth: Smooth, x: torch.Tensor, n0: int, n: int, alpha: float,
                generator: torch.Generator) -> RowResult:
        """Sample every level, bound (SOUND.md 3a, alpha split over K*(C+1) statements), apply the rule."""
        for sigma in self.levels:
            check_certify_settings(sigma, n0, n, alpha)
        candidates, counts = self.level_counts(smooth, x, n0, n, generator)
        p_lower, p_upper = level_bounds(candidates, counts, n, alpha)
        cert = self.rule([noise_sigma(sigma) for sigma in self.levels], candidates, p_lower, p_upper)
        level = cert.level if cert.level >= 0 else 0
        radius = cert.radius if cert.predict != ABSTAIN else 0.0
        return RowResult(cert.predict, radius, self.levels[level], float(p_lower[level]), self.guarantee,
                         search_time=0.0, search_draws=(len(self.levels) - 1) * (n0 + n),
                         extra={"level": cert.level, "limited_by": cert.label})


class CascadeSigma(_FiniteLevels):
    """Cascade over fixed levels: the first confident level from the top answers (SOUND.md 3a).

    levels: the noise levels (any order; used largest first); p0: the confidence threshold in [1/2, 1).
    Guarantee ``sound``."""

    name = "cascade"

    def rule(self, levels, candidates, p_lower, p_upper) -> LevelCertificate:
        return cascade_radius(levels, candidates, p_lower, p_upper, self.p0)


class BestLevelSigma(_FiniteLevels):
    """Best level on a fixed grid: the confident level of largest radius term answers (SOUND.md 3a).

    levels: the noise levels (any order); p0: the confidence threshold in [1/2, 1). Guarantee ``sound``."""

    name = "grid"

    def rule(self, levels, candidates, p_lower, p_upper) -> LevelCertificate:
        return best_level_radius(levels, candidates, p_lower, p_upper, self.p0)
