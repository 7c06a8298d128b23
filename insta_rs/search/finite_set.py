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

PREDICT (``choose_sigma``): the rule picks its level from n0 draws per level (those draws serve as both the
candidates and the counts, which only a choice may do), the smallest level when none is confident; Cohen's
PREDICT then runs at that level with fresh draws. Its answer is that of g_sigma at the chosen level, not of
the rule's instance-wise classifier (whose answer needs every level's bounds): guarantee ``instance``.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..certificates import ABSTAIN
from ..certificates.finite_set import LevelCertificate, best_level_radius, cascade_radius, cp_upper, level_bounds
from ..errors import check
from ..smoothing import Smooth, check_certify_settings, noise_sigma
from .base import RowResult, SigmaChoice, SigmaMethod


def check_levels(levels) -> list[float]:
    """The levels, largest first; ConfigError unless they are a non-empty list of distinct numbers > 0."""
    levels = list(levels) if hasattr(levels, "__iter__") and not isinstance(levels, str) else levels
    ok = isinstance(levels, list) and len(levels) >= 1 and all(
        isinstance(s, (int, float)) and not isinstance(s, bool) and math.isfinite(s) and s > 0 for s in levels)
    check(ok and len(set(float(s) for s in levels)) == len(levels), "levels", levels,
          "a non-empty list of distinct numbers > 0, e.g. [1.0, 0.5, 0.25]")
    return sorted((float(s) for s in levels), reverse=True)


class _FiniteLevels(SigmaMethod):
    guarantee = "sound"
    extra_columns = ("level", "limited_by")

    def __init__(self, levels=(1.0, 0.5, 0.25), p0: float = 0.5, experts=None):
        self.levels = check_levels(levels)
        check(isinstance(p0, (int, float)) and not isinstance(p0, bool) and 0.5 <= p0 < 1, "p0", p0,
              "a number in [0.5, 1)")
        self.p0 = float(p0)
        self.experts = experts

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

    def certify_sequential(self, smooth: Smooth, x: torch.Tensor, n0: int, n_max: int, alpha: float,
                           generator) -> tuple[LevelCertificate, np.ndarray, int]:
        """The K(C+1) statements of SOUND.md 3a, staged (SOUND.md 3e): every level draws up to each look of the
        plan's bound; at a stage of the union schedule each statement gets its share alpha_s / (K(C+1)) (with
        the confidence sequence, alpha / (K(C+1)) at every look); the bounds kept are the best over the looks
        (all hold together with probability >= 1 - alpha). Stops when even the reachable bounds at n_max
        abstain, or cannot raise the radius by more than the tolerance (or reach the next listed radius)."""
        plan, levels = smooth.sequential, [noise_sigma(sigma) for sigma in self.levels]
        rows = x.unsqueeze(0).expand(len(self.levels), *x.shape)
        sigmas = torch.tensor(self.levels, dtype=torch.float32)
        candidates = smooth.sample_counts(rows, sigmas, n0, generator).argmax(dim=1).cpu().numpy()
        bound, anytime = plan.bound(n_max, alpha), plan.bound_kind == "anytime"
        counts, trials, lower, upper = 0, 0, None, None
        for stage, look in enumerate(bound.looks()):
            counts = counts + smooth.sample_counts(rows, sigmas, look - trials, generator).cpu().numpy()
            trials = look
            share = alpha if anytime else bound.alphas[stage]
            p_lower, p_upper = level_bounds(candidates, counts, trials, share, anytime)
            lower = p_lower if lower is None else np.maximum(lower, p_lower)
            upper = p_upper if upper is None else np.minimum(upper, p_upper)
            cert = self.rule(levels, candidates, lower, upper)
            if trials >= n_max or self._stop(plan, cert, self._reachable(
                    plan, levels, candidates, counts, trials, n_max, alpha if anytime else bound.alphas[-1],
                    anytime, lower, upper)):
                return cert, lower, trials
        raise AssertionError("the last look is n_max")

    def _reachable(self, plan, levels, candidates, counts, trials, n_max, share, anytime, lower, upper):
        """The certificate the bounds at n_max would give if the remaining draws went well: each candidate
        gains at the Clopper-Pearson upper rate of its count (at ``plan.reach_alpha``; all of them if None),
        the other classes gain nothing."""
        rest = n_max - trials
        top = np.take_along_axis(counts, candidates[:, None], axis=1)[:, 0]
        rate = 1.0 if plan.reach_alpha is None else cp_upper(top, trials, plan.reach_alpha)
        reach = counts.copy()
        np.put_along_axis(reach, candidates[:, None], (top + np.ceil(rate * rest)).astype(np.int64)[:, None], axis=1)
        p_lower, p_upper = level_bounds(candidates, reach, n_max, share, anytime)
        return self.rule(levels, candidates, np.maximum(lower, p_lower), np.minimum(upper, p_upper))

    @staticmethod
    def _stop(plan, cert: LevelCertificate, reach: LevelCertificate) -> bool:
        if reach.predict == ABSTAIN:
            return True  # abstaining makes no claim: always allowed
        if plan.radii is None:
            return reach.radius - cert.radius <= plan.tolerance
        above = [r for r in plan.radii if r > cert.radius]
        return not above or above[0] > reach.radius

    def _row(self, cert: LevelCertificate, p_lower: np.ndarray, per_level: int) -> RowResult:
        level = cert.level if cert.level >= 0 else 0
        radius = cert.radius if cert.predict != ABSTAIN else 0.0
        return RowResult(cert.predict, radius, self.levels[level], float(p_lower[level]), self.guarantee,
                         search_time=0.0, search_draws=(len(self.levels) - 1) * per_level,
                         extra={"level": cert.level, "limited_by": cert.label})

    def choose_sigma(self, smooth: Smooth, x: torch.Tensor, n0: int, alpha: float,
                     generator: torch.Generator) -> SigmaChoice:
        """The rule's level from n0 draws per level (module docstring), guarantee ``instance``."""
        rows = x.unsqueeze(0).expand(len(self.levels), *x.shape)
        counts = smooth.sample_counts(rows, torch.tensor(self.levels, dtype=torch.float32), n0, generator).cpu().numpy()
        candidates = counts.argmax(axis=1)
        p_lower, p_upper = level_bounds(candidates, counts, n0, alpha)
        level = self.rule([noise_sigma(sigma) for sigma in self.levels], candidates, p_lower, p_upper).level
        smallest = len(self.levels) - 1  # levels are sorted largest first
        return SigmaChoice(self.levels[level if level >= 0 else smallest], "instance", len(self.levels) * n0)

    def certify(self, smooth: Smooth, x: torch.Tensor, n0: int, n: int, alpha: float,
                generator: torch.Generator) -> RowResult:
        """Sample every level, bound (SOUND.md 3a, alpha split over K*(C+1) statements), apply the rule."""
        for sigma in self.levels:
            check_certify_settings(sigma, n0, n, alpha)
        if smooth.sequential is not None:
            cert, p_lower, trials = self.certify_sequential(smooth, x, n0, n, alpha, generator)
            return self._row(cert, p_lower, n0 + trials)
        candidates, counts = self.level_counts(smooth, x, n0, n, generator)
        p_lower, p_upper = level_bounds(candidates, counts, n, alpha)
        cert = self.rule([noise_sigma(sigma) for sigma in self.levels], candidates, p_lower, p_upper)
        return self._row(cert, p_lower, n0 + n)


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
