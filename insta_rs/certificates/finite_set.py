"""Sound certificates for a finite set of noise levels: the cascade and best-level rules (SOUND.md 3a).

Notation (SOUND.md): levels sigma_1 > ... > sigma_K, p_k(x, c) = P[f(x + sigma_k e) = c], a threshold
p0 in [1/2, 1). Level k is *confident in c* at x when p_k(x, c) > p0 (at most one class can be). The
key fact: x -> PhiInv(p_k(x, c)) is (1/sigma_k)-Lipschitz (Salman et al. 2019). So, inside the open
L2 ball of radius r around x,
- a level with p_k(x, y) >= p_lo stays confident in y while r <= sigma_k (PhiInv(p_lo) - PhiInv(p0));
- a level with p_k(x, c) <= p_hi cannot become confident in c while r <= sigma_k (PhiInv(p0) - PhiInv(p_hi)).

Cascade (answer with the first confident level from the top), stopping at level k* with class y:
    R = min( sigma_k* (PhiInv(p_lo_k*(y)) - PhiInv(p0)),
             min over j < k*, c != y of sigma_j (PhiInv(p0) - PhiInv(p_hi_j(c))) ).
Best level (answer with some confident level, here the one with the largest lower-bound term):
    R = min( max over confident k with class y of sigma_k (PhiInv(p_lo_k(y)) - PhiInv(p0)),
             min over all k, c != y of sigma_k (PhiInv(p0) - PhiInv(p_hi_k(c))) ).
R <= 0 means abstain.

The statements and how alpha is split (``statement_alpha``, ``level_bounds``). Per level k, n0 draws
pick the candidate c_k, n fresh draws give the counts of every class. The procedure may use, whatever
level it stops at and whatever class it answers:
- the lower bound of p_k(c_k) at every level k (K statements), and
- an upper bound of p_k(c) for every level k and every class c, *including c_k*: when the answer y
  differs from a level's candidate c_k, the radius needs p_hi_k(c_k) (SOUND.md's count K*(C-1) leaves
  that one out; a level whose top class is not the answer is the common case for the cascade).
That is K*(C+1) statements; Bonferroni gives each alpha / (K*(C+1)), so all hold together with
probability >= 1 - alpha. Free tightening: once the lower bound L_k of p_k(c_k) holds, p_k(c) <= 1 - L_k
for every c != c_k (the probabilities sum to 1), so ``level_bounds`` returns min(CP upper, 1 - L_k)
for those classes -- no new statement, no extra alpha. (Using only 1 - L_k for all other classes would
need just the K lower bounds plus the K upper bounds of the candidates, but it is useless for the
cascade: a level that is not confident has L_k <= p0, so 1 - L_k >= 1 - p0 and with p0 = 1/2 the
R_minus term is never positive.)

Only exact Clopper-Pearson bounds are used. Edges: PhiInv(0) = -inf, PhiInv(1) = +inf; PhiInv(p0) is
finite (p0 < 1), so no term is ever inf - inf and nothing is NaN; an upper bound of 1 gives R = -inf.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import check
from .bounds import ABSTAIN, cp_lower, cp_upper, phi_inv
from .sequential import anytime_lower


@dataclass(frozen=True)
class LevelCertificate:
    """The answer of a finite-level rule at one input.

    predict: the class y, or ABSTAIN (-1) when no level is confident or the radius is <= 0.
    radius: the certified L2 radius (0 when abstaining).
    level: index (in the given level order) of the level the rule answers with; -1 when none is confident.
    limited_by: "lower" (the R_plus term: the answering levels' lower bound), "upper" (an R_minus term:
        another class could become confident at level ``limit_level``), or "none" (no confident level).
    limit_level: index of the level whose term set the radius; -1 for "none".
    """

    predict: int
    radius: float
    level: int
    limited_by: str
    limit_level: int

    @property
    def label(self) -> str:
        """``lower@k`` / ``upper@k`` / ``none``: the ``limited_by`` TSV column."""
        return "none" if self.limited_by == "none" else f"{self.limited_by}@{self.limit_level}"


def statement_alpha(alpha: float, num_levels: int, num_classes: int) -> float:
    """Each statement's level: alpha / (K * (C + 1)) (K lower bounds + K*C upper bounds; module docstring)."""
    check(0.0 < alpha < 1.0, "alpha", alpha, "a number in (0, 1)")
    check(num_levels >= 1, "levels", num_levels, "at least one level")
    check(num_classes >= 2, "num_classes", num_classes, "at least 2 classes")
    return alpha / (num_levels * (num_classes + 1))




def level_bounds(candidates, counts, n: int, alpha: float, anytime: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The simultaneous bounds of SOUND.md 3a from each level's estimation counts.

    candidates: (..., K) class picked at each level by its n0 selection draws (independent of counts).
    counts: (..., K, C) class counts of the n estimation draws at each level.
    Returns (p_lower (..., K), p_upper (..., K, C)): p_lower[k] bounds p_k(c_k) from below, p_upper[k, c]
    bounds p_k(c) from above for every class (min(CP upper, 1 - p_lower[k]) for c != c_k). All hold
    together with probability >= 1 - alpha (each CP bound at ``statement_alpha``). Leading dimensions
    broadcast (several inputs or simulated trials at once). ``anytime``: each statement is instead the
    beta-binomial mixture confidence sequence at ``statement_alpha`` (valid at every n at once; SOUND.md 3e),
    the upper bound of c being one minus the lower bound of "not c".
    """
    counts = np.asarray(counts)
    candidates = np.asarray(candidates, dtype=np.int64)
    num_levels, num_classes = counts.shape[-2], counts.shape[-1]
    each = statement_alpha(alpha, num_levels, num_classes)
    top = np.take_along_axis(counts, candidates[..., None], axis=-1)[..., 0]
    if anytime:
        lower = np.vectorize(lambda k: anytime_lower(int(k), int(n), each), otypes=[np.float64])
        p_lower, p_upper = lower(top), 1.0 - lower(n - counts)
    else:
        p_lower, p_upper = cp_lower(top, n, each), cp_upper(counts, n, each)
    others = np.arange(num_classes) != candidates[..., None]
    p_upper = np.where(others, np.minimum(p_upper, 1.0 - p_lower[..., None]), p_upper)
    return p_lower, p_upper


def _validate(levels, candidates, p_lower, p_upper, p0):
    levels = np.asarray(levels, dtype=np.float64).reshape(-1)
    candidates = np.asarray(candidates, dtype=np.int64).reshape(-1)
    p_lower = np.asarray(p_lower, dtype=np.float64).reshape(-1)
    p_upper = np.asarray(p_upper, dtype=np.float64)
    check(0.5 <= p0 < 1.0, "p0", p0, "a number in [0.5, 1)")
    if not (levels.size >= 1 and np.all(levels > 0) and candidates.shape == levels.shape
            and p_lower.shape == levels.shape and p_upper.ndim == 2 and p_upper.shape[0] == levels.size):
        raise ValueError(f"finite-set bounds do not match: {levels.size} levels, candidates {candidates.shape}, "
                         f"p_lower {p_lower.shape}, p_upper {p_upper.shape}")
    return levels, candidates, p_lower, p_upper


def _upper_terms(levels, p_upper, y: int, rows, p0: float) -> np.ndarray:
    """sigma_j (PhiInv(p0) - PhiInv(p_hi_j(c))) minimised over c != y, for each level j in ``rows`` (+inf if none)."""
    if len(rows) == 0 or p_upper.shape[1] < 2:
        return np.full(len(rows), np.inf)
    others = np.delete(p_upper[rows], y, axis=1)
    terms = levels[rows, None] * (phi_inv(p0) - phi_inv(others))
    return terms.min(axis=1)


def _combine(y: int, level: int, r_plus: float, r_plus_level: int, upper: np.ndarray, rows) -> LevelCertificate:
    r_minus, minus_level = (float(upper.min()), int(rows[int(upper.argmin())])) if len(rows) else (np.inf, -1)
    if r_plus <= r_minus:
        radius, limited_by, limit_level = r_plus, "lower", r_plus_level
    else:
        radius, limited_by, limit_level = r_minus, "upper", minus_level
    if not radius > 0:
        return LevelCertificate(ABSTAIN, 0.0, level, limited_by, limit_level)
    return LevelCertificate(int(y), float(radius), level, limited_by, limit_level)


def cascade_radius(levels, candidates, p_lower, p_upper, p0: float) -> LevelCertificate:
    """The cascade's answer and sound radius (SOUND.md 3a).

    levels: (K,) strictly descending sigmas; candidates: (K,) each level's candidate class; p_lower: (K,)
    lower bounds of p_k(c_k); p_upper: (K, C) upper bounds of p_k(c) (from ``level_bounds``). A level
    counts as confident when p_lower > p0. Stops at the first confident level k*; radius
    min(R_plus, R_minus) with R_minus over the levels above k* only; abstains if none is confident or R <= 0.
    """
    levels, candidates, p_lower, p_upper = _validate(levels, candidates, p_lower, p_upper, p0)
    if not np.all(np.diff(levels) < 0):
        raise ValueError(f"cascade levels must be strictly descending, got {levels.tolist()}")
    confident = np.flatnonzero(p_lower > p0)
    if confident.size == 0:
        return LevelCertificate(ABSTAIN, 0.0, -1, "none", -1)
    k = int(confident[0])
    y = int(candidates[k])
    r_plus = float(levels[k] * (phi_inv(p_lower[k]) - phi_inv(p0)))
    rows = np.arange(k)
    return _combine(y, k, r_plus, k, _upper_terms(levels, p_upper, y, rows, p0), rows)


def best_level_radius(levels, candidates, p_lower, p_upper, p0: float) -> LevelCertificate:
    """The best-level rule's answer and sound radius (SOUND.md 3a), levels in any order.

    Among the confident levels (p_lower > p0) the one with the largest sigma_k (PhiInv(p_lower_k) -
    PhiInv(p0)) gives the class y and the R_plus term; R_minus is the minimum over *all* levels and
    classes c != y. The radius covers any rule that answers with some confident level. Abstains if no
    level is confident or R <= 0 (e.g. two levels confident in different classes).
    """
    levels, candidates, p_lower, p_upper = _validate(levels, candidates, p_lower, p_upper, p0)
    confident = np.flatnonzero(p_lower > p0)
    if confident.size == 0:
        return LevelCertificate(ABSTAIN, 0.0, -1, "none", -1)
    plus = levels[confident] * (phi_inv(p_lower[confident]) - phi_inv(p0))
    best = int(confident[int(plus.argmax())])
    y = int(candidates[best])
    rows = np.arange(levels.size)
    return _combine(y, best, float(plus.max()), best, _upper_terms(levels, p_upper, y, rows, p0), rows)
