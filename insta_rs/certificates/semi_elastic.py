"""Sound certified radius for a semi-elastic sigma(x) (Sukenik, Kuvshinov & Gunnemann, ICML 2022).

ALGORITHMS.md 3c and SOUND.md 3c. A noise rule is *r-semi-elastic* when
|log sigma(x) - log sigma(x')| <= r ||x - x'|| for all x, x'. The smoothed classifier
g(x) = argmax_c P[f(x + sigma(x) e) = c] then has a sound certificate, computed here.

The worst case (Neyman-Pearson). At x0 the noise is N(x0, sigma0^2 I) and the classes other than A
have probability at most p_B = 1 - pA_lower. At x1 = x0 + R e1 the noise is N(x1, sigma1^2 I). Over
all base classifiers consistent with p_B, the largest probability of "not A" at x1 is the
probability under N(x1, sigma1^2 I) of a likelihood-ratio set of probability p_B under
N(x0, sigma0^2 I). For sigma1 != sigma0 that set is a ball (sigma1 < sigma0) or the complement of a
ball (sigma1 > sigma0) centred at x0 + sigma0^2 R / (sigma0^2 - sigma1^2) e1, which gives
SOUND.md's formulas with lambda0 = sigma0^2 R^2 / (sigma0^2 - sigma1^2)^2 and
lambda1 = sigma1^2 R^2 / (sigma0^2 - sigma1^2)^2:

    sigma1 < sigma0:  xi = F_{chi2_d(lambda1)}( (sigma0^2/sigma1^2) * Finv_{chi2_d(lambda0)}(p_B) )
    sigma1 > sigma0:  xi = 1 - F_{chi2_d(lambda1)}( (sigma0^2/sigma1^2) * Finv_{chi2_d(lambda0)}(1 - p_B) )
    sigma1 = sigma0:  xi = Phi(PhiInv(p_B) + R/sigma0)                               (Cohen)

Numerics (each a way to report too large a radius, SOUND.md 3c):
- scipy.stats.ncx2 is exact enough for moderate noncentrality but becomes slow above lambda ~ 1e10
  and returns NaN above ~ 1e11, which is where sigma1/sigma0 is within ~1e-6 of 1.
  ``_xi_quadrature`` computes the same quantity without the noncentral chi-square: in standard
  coordinates of either Gaussian, ||Z - a e1||^2 = (Z1 - a)^2 + V with V ~ chi2_{d-1}, so the
  probability of the ball or its complement is E_V[normal CDF terms], taken by Gauss-Hermite
  quadrature in the normal variable w with V = F^{-1}_{chi2_{d-1}}(Phi(w)). The ball is
  parametrised by tau, the point where its boundary crosses the axis on the side of x0, so nothing
  of size lambda is ever subtracted from something of size lambda: the normal-CDF arguments are
  tau + V / (b + sqrt(b^2 - V)) (b the ball radius), and the crossing point seen from x1 is
  (sigma0 tau - R) / sigma1. As sigma1 -> sigma0 this tends to Cohen's half-space.
- For 1e4 <= lambda0 <= 1e9 both are computed and the larger is used; the quadrature is
  evaluated at two orders and reports the larger value plus their difference; tau is taken on the
  side of the bisection whose set is larger. Whenever nothing trustworthy is available, xi = 1
  (no certificate). Every choice errs toward the larger xi, i.e. the smaller radius.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from scipy.special import ndtr
from scipy.stats import chi2, ncx2

from .bounds import cohen_radius, phi_inv

NCX2_MAX_NONCENTRALITY = 1e9
"""Above this lambda0, scipy's ncx2 is not used (slow, then NaN); the quadrature is."""

QUADRATURE_MIN_NONCENTRALITY = 1e4
"""From this lambda0 on, the quadrature is computed too (it needs the ball to be far larger than the
spread of chi2_{d-1}, which holds there); between the two limits the larger value is used."""

_QUADRATURE_ORDERS = (48, 96)
_BISECTION_STEPS = 64


def worst_case_other_probability(p_b, radius, sigma0, sigma1, d: int):
    """xi: the largest possible probability of the classes other than A at x1, ||x1 - x0|| = radius,
    smoothed with sigma1, given probability at most p_b for them at x0 smoothed with sigma0 (SOUND.md 3c).

    Both branches (sigma1 < sigma0: a ball; sigma1 > sigma0: the complement of a ball) and Cohen's value at
    sigma1 == sigma0. Arguments broadcast against each other (numpy arrays or scalars); d is the input
    dimension. Returns a float for scalar arguments, else an array. Where no value can be trusted the
    answer is 1.0 (the most conservative one).
    """
    _check_dimension(d)
    p_b, radius, sigma0, sigma1 = np.broadcast_arrays(*(np.asarray(v, dtype=np.float64)
                                                         for v in (p_b, radius, sigma0, sigma1)))
    scalar = p_b.ndim == 0
    shape = p_b.shape
    p_b, radius, sigma0, sigma1 = (np.atleast_1d(v).ravel() for v in (p_b, radius, sigma0, sigma1))
    if np.any(~(sigma0 > 0)) or np.any(~(sigma1 > 0)) or np.any(~np.isfinite(sigma0)) or np.any(~np.isfinite(sigma1)):
        raise ValueError("sigma0 and sigma1 must be finite and > 0")
    if np.any(~(radius >= 0)):
        raise ValueError("radius must be >= 0")
    if np.any(~((p_b >= 0) & (p_b <= 1))):
        raise ValueError("p_b must lie in [0, 1]")

    out = np.ones_like(p_b)
    same = sigma1 == sigma0
    out[same] = ndtr(phi_inv(p_b[same]) + radius[same] / sigma0[same])
    other = ~same
    if np.any(other):
        pb, rr, s0, s1 = p_b[other], radius[other], sigma0[other], sigma1[other]
        lam0 = (s0 * rr / ((s0 - s1) * (s0 + s1))) ** 2
        candidates = np.full((2, pb.size), np.nan)
        use_ncx2 = lam0 <= NCX2_MAX_NONCENTRALITY
        if np.any(use_ncx2):
            candidates[0, use_ncx2] = _xi_ncx2(pb[use_ncx2], rr[use_ncx2], s0[use_ncx2], s1[use_ncx2], d)
        use_quad = lam0 >= QUADRATURE_MIN_NONCENTRALITY
        if np.any(use_quad):
            candidates[1, use_quad] = _xi_quadrature(pb[use_quad], rr[use_quad], s0[use_quad], s1[use_quad], d)
        bad = ~np.isfinite(candidates)
        best = np.where(bad, -np.inf, candidates).max(axis=0)
        out[other] = np.where(np.isfinite(best), np.clip(best, 0.0, 1.0), 1.0)
    return float(out[0]) if scalar else out.reshape(shape)


def sigma_interval(sigma0: float, r: float, radius: float, log_slack: float = 0.0) -> tuple[float, float]:
    """The noise levels an r-semi-elastic rule may take at distance ``radius`` from x0:
    [sigma0 exp(-(r radius + log_slack)), sigma0 exp(r radius + log_slack)]."""
    spread = r * radius + log_slack
    return sigma0 * math.exp(-spread), sigma0 * math.exp(spread)


def worst_case_over_interval(p_b: float, radii, sigma0: float, r: float, d: int,
                             log_slack: float = 0.0) -> np.ndarray:
    """G(R) = max over sigma1 in [sigma0 e^{-(rR + s)}, sigma0 e^{rR + s}] of xi(R, sigma1), for each R in
    ``radii`` (s = ``log_slack``, 0 for the exact rule), taken over the two interval ends and
    sigma1 = sigma0 (Cohen's value).

    Why these three points suffice: on each side of sigma0, xi is quasi-convex in log sigma1 (it
    falls, or rises, from Cohen's value at sigma0 and then rises towards 1 as sigma1 moves away,
    because the noise norms of the two Gaussians separate), so its maximum over [sigma0, sigma0 e^{rR}]
    and over [sigma0 e^{-rR}, sigma0] lies at an end. Near sigma0 xi is *not* monotone (it crosses
    Cohen's value with a slope of either sign), which is why the Cohen value is included. We checked
    this numerically on 400 random configurations with 200-point sigma1 grids (d = 1..150528,
    p_B in [1e-6, 0.49], rR from 1e-7 to 2): no interior point exceeded the three by more than 1e-9;
    ``tests/test_semi_elastic.py`` repeats a random sample of that check.
    """
    radii = np.atleast_1d(np.asarray(radii, dtype=np.float64))
    spread = r * radii + log_slack
    low = sigma0 * np.exp(-spread)
    high = sigma0 * np.exp(spread)
    xi_low = worst_case_other_probability(p_b, radii, sigma0, low, d)
    xi_high = worst_case_other_probability(p_b, radii, sigma0, high, d)
    xi_cohen = ndtr(phi_inv(p_b) + radii / sigma0)
    return np.maximum(np.maximum(xi_low, xi_high), xi_cohen)


def semi_elastic_radius(p_a_lower: float, sigma0: float, r: float, d: int, *, log_slack: float = 0.0,
                        rel_tol: float = 1e-4, verify_points: int = 16) -> float:
    """The certified L2 radius of the r-semi-elastic smoothed classifier at x0 (SOUND.md 3c).

    The largest R (to a relative resolution ``rel_tol``, rounded *down*) such that xi < 1/2 for every
    R' <= R and every sigma1 in [sigma0 e^{-rR'}, sigma0 e^{rR'}], with p_B = 1 - p_a_lower.
    Never larger than Cohen's sigma0 * PhiInv(p_a_lower) (the sigma1 = sigma0 term), equal to it at r = 0,
    0 when p_a_lower <= 1/2. d is the input dimension. ``sigma0`` is the sigma the noise at x0 was actually
    scaled by (in ``Smooth``: the float32 rounding of sigma(x0), ``smoothing.noise_sigma``), as for Cohen's
    radius: a float64 sigma0 a hair above it would certify a hair too much.

    Search: bisection of [0, Cohen's radius] on the condition G(R) < 1/2 (``worst_case_over_interval``),
    keeping as ``lo`` only points where the condition was verified; then the condition is checked on a
    grid of ``verify_points`` points in (0, lo]. If any grid point fails, the search restarts below it, so a
    non-monotone G can only cost radius, never add it. G is expected to be nondecreasing (the interval
    of sigma1 grows with R, and xi grows with R at fixed sigma1: checked numerically on 300 random
    (d, p_B, sigma0, sigma1) with 150-point R grids, as was G itself); the grid is the guard.

    ``log_slack`` s > 0 certifies rules with |log sigma(x) - log sigma(x')| <= r ||x - x'|| + s, e.g. to
    cover the float32 rounding of a computed sigma (SemiElasticSigma uses s = 1e-6); s = 0 is the exact
    rule. Sound only if sigma(x) really is r-semi-elastic with this r.
    """
    _check_dimension(d)
    r, log_slack = float(r), float(log_slack)
    if not (r >= 0 and math.isfinite(r)):
        raise ValueError(f"r must be a finite number >= 0, got {r!r}")
    if not p_a_lower < 1.0:
        raise ValueError(f"p_a_lower must be < 1 (a confidence bound), got {p_a_lower!r}")
    cohen = cohen_radius(sigma0, p_a_lower)
    if cohen <= 0.0:
        return 0.0
    if not (log_slack >= 0 and math.isfinite(log_slack)):
        raise ValueError(f"log_slack must be a finite number >= 0, got {log_slack!r}")
    if r == 0 and log_slack == 0:
        return cohen
    p_b = 1.0 - float(p_a_lower)

    def holds(radii) -> np.ndarray:
        return worst_case_over_interval(p_b, radii, sigma0, r, d, log_slack) < 0.5

    lo, hi = 0.0, cohen
    while True:
        while hi - lo > rel_tol * hi and hi > 1e-12:
            mid = 0.5 * (lo + hi)
            if holds(mid)[0]:
                lo = mid
            else:
                hi = mid
        if lo <= 0.0:
            return 0.0
        grid = lo * np.arange(1, verify_points + 1) / verify_points
        failed = ~holds(grid)
        if not failed.any():
            return float(lo)
        first = int(np.argmax(failed))
        hi = float(grid[first])
        lo = float(grid[first - 1]) if first > 0 else 0.0


# ---------------------------------------------------------------------------------------------------
# The two ways of computing xi for sigma1 != sigma0.

def _xi_ncx2(p_b, radius, sigma0, sigma1, d):
    """SOUND.md 3c's formulas with scipy.stats.ncx2 (elementwise)."""
    denominator = ((sigma0 - sigma1) * (sigma0 + sigma1)) ** 2
    lam0 = sigma0**2 * radius**2 / denominator
    lam1 = sigma1**2 * radius**2 / denominator
    scale = (sigma0 / sigma1) ** 2
    out = np.full(p_b.shape, np.nan)
    below = sigma1 < sigma0
    with np.errstate(all="ignore"):
        if np.any(below):
            q = ncx2.ppf(p_b[below], d, lam0[below])
            out[below] = ncx2.cdf(scale[below] * q, d, lam1[below])
        above = ~below
        if np.any(above):
            q = ncx2.isf(p_b[above], d, lam0[above])  # the (1 - p_B)-quantile, without forming 1 - p_B
            out[above] = ncx2.sf(scale[above] * q, d, lam1[above])
    return out


@functools.lru_cache(maxsize=64)
def _chi2_nodes(dof: int, order: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights for E[h(V)], V ~ chi2_dof: probabilists' Gauss-Hermite in w, V = F^{-1}(Phi(w))."""
    w, weights = np.polynomial.hermite_e.hermegauss(order)
    weights = weights / weights.sum()
    if dof == 0:
        return np.zeros(1), np.ones(1)
    nodes = np.where(w < 0, chi2.ppf(ndtr(w), dof), chi2.isf(ndtr(-w), dof))
    return nodes, weights


def _region_probability(tau, center, ball_radius, inside: bool, nodes, weights):
    """P[Z in region], Z ~ N(0, I_d), for the ball B(center e1, ball_radius) (inside) or its complement,
    with tau the crossing point of the sphere nearest the origin side: tau = center - ball_radius (inside,
    center > 0) or center + ball_radius (complement, center < 0). Uses ||Z - c e1||^2 = (Z1 - c)^2 + V.
    Returns (probability, valid), valid False where a quadrature node reaches the sphere's cut-off
    V = ball_radius^2 (the integrand has a kink there and the quadrature is not trusted)."""
    v = nodes[None, :]
    b = ball_radius[:, None]
    within = v < b * b
    root = np.sqrt(np.where(within, b * b - v, 0.0))
    shift = v / (b + root)  # = b - root, without cancellation
    if inside:
        near = tau[:, None] + shift          # Z1 from near to far lies in the ball
        far = center[:, None] + root
        p = np.where(within, ndtr(-near) - ndtr(-far), 0.0)
    else:
        near = tau[:, None] - shift          # Z1 beyond near, or below far, lies outside the ball
        far = center[:, None] - root
        p = np.where(within, ndtr(-near) + ndtr(far), 1.0)
    valid = within.all(axis=1)
    return p @ weights, valid


def _xi_quadrature(p_b, radius, sigma0, sigma1, d):
    """xi without the noncentral chi-square (for sigma1/sigma0 near 1, i.e. huge lambda); see the module
    docstring. Takes the larger of two quadrature orders plus their difference; NaN where invalid."""
    results = [_xi_quadrature_order(p_b, radius, sigma0, sigma1, d, order) for order in _QUADRATURE_ORDERS]
    a, b = results
    return np.maximum(a, b) + np.abs(a - b)


def _xi_quadrature_order(p_b, radius, sigma0, sigma1, d, order):
    nodes, weights = _chi2_nodes(d - 1, order)
    out = np.full(p_b.shape, np.nan)
    for inside in (True, False):
        sel = (sigma1 < sigma0) if inside else (sigma1 > sigma0)
        if not np.any(sel):
            continue
        pb, rr, s0, s1 = p_b[sel], radius[sel], sigma0[sel], sigma1[sel]
        a0 = s0 * rr / ((s0 - s1) * (s0 + s1))  # centre in x0's standard coordinates (> 0 inside, < 0 outside)
        a1 = a0 * s1 / s0                        # centre in x1's standard coordinates

        def p0(tau):
            b = (a0 - tau) if inside else (tau - a0)
            return _region_probability(tau, a0, b, inside, nodes, weights)

        # P0 decreases in tau in both cases. Initial bracket around the large-ball approximation.
        guess = -phi_inv(pb) + (-1.0 if inside else 1.0) * (d / (2.0 * np.abs(a0)))
        width = np.full(pb.shape, 8.0)
        lo = guess - width
        hi = guess + width
        if inside:
            hi = np.minimum(hi, a0)
        else:
            lo = np.maximum(lo, a0)
        for _ in range(60):  # widen until P0(lo) >= p_b >= P0(hi)
            need_lo = p0(lo)[0] < pb
            need_hi = p0(hi)[0] > pb
            if not (need_lo.any() or need_hi.any()):
                break
            width = width * 2
            lo = np.where(need_lo, lo - width, lo)
            hi = np.where(need_hi, hi + width, hi)
            if inside:
                hi = np.minimum(hi, a0)
            else:
                lo = np.maximum(lo, a0)
        bracketed = (p0(lo)[0] >= pb) & (p0(hi)[0] <= pb)
        for _ in range(_BISECTION_STEPS):
            mid = 0.5 * (lo + hi)
            above = p0(mid)[0] >= pb
            lo = np.where(above, mid, lo)
            hi = np.where(above, hi, mid)
        tau = lo                                  # the larger set: P0 >= p_b there
        b0 = (a0 - tau) if inside else (tau - a0)
        _, valid0 = p0(tau)
        tau1 = (s0 * tau - rr) / s1               # the same crossing point in x1's coordinates
        b1 = b0 * s0 / s1
        xi, valid1 = _region_probability(tau1, a1, b1, inside, nodes, weights)
        out[sel] = np.where(bracketed & valid0 & valid1, xi, np.nan)
    return out


def _check_dimension(d) -> None:
    if not (isinstance(d, (int, np.integer)) and d >= 1):
        raise ValueError(f"the input dimension d must be an integer >= 1, got {d!r}")
