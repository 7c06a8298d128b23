"""The radius of the answer-stable selector rule (README "Guarantees", section 3f in SOUND.md's form).

Setting (SOUND.md 3d): levels sigma_1 < ... < sigma_K, a selector network h_sel smoothed at sigma_sel with
level probabilities q_k(x) = P[h_sel(x + sigma_sel e) = k], the smoothed selector s(x) = argmax_k q_k(x)
(any fixed tie-break), and the instance-wise classifier G(x) = g_{s(x)}(x), g_k the base classifier (or
level k's expert) smoothed at sigma_k. SOUND.md 3d certifies G by keeping the *level* constant on the ball;
the answer rule only keeps the *answer* constant: the level may change, as long as every level it could
change to answers the same class there.

Both x -> sigma_sel PhiInv(q_k(x)) and x -> sigma_k PhiInv(p_k(x, y)) are 1-Lipschitz (Salman et al. 2019).
At x, with the selector's level s, bounds q_lo_s <= q_s(x) and q_hi_k >= q_k(x) (k != s), and the class y:

- ``switch_radii``: level k != s cannot be the argmax anywhere in the open ball of radius
      e_k = sigma_sel (PhiInv(q_lo_s) - PhiInv(q_hi_k)) / 2,
  since there PhiInv(q_k) < PhiInv(q_hi_k) + e_k / sigma_sel = PhiInv(q_lo_s) - e_k / sigma_sel < PhiInv(q_s).
  (q_hi_k may be replaced by 1 - q_lo_s, as the q_k sum to 1; then e_k = sigma_sel PhiInv(q_lo_s), Cohen's
  radius of the selector, which is SOUND.md 3d's R_sel.)
- level k keeps answering y in the open ball of radius r_k = sigma_k PhiInv(p_lo_k(y)) (Cohen; 0 when the
  bound is <= 1/2).
- ``answer_radius``: R = min( r_s, min over k != s of max(e_k, r_k) ). At x' with ||x' - x|| = d < R the
  selector's level is s or some k with e_k <= d; for that k, d < R <= max(e_k, r_k) gives d < r_k. So
  every level the selector can pick at x' answers y there: G(x') = y.

R <= 0 means abstain. With a selector that is sure of one level (q_hi_k tiny for every other k) the rule
gives min(R_sel-like e_k, r_s) as 3d does; where the selector hesitates between levels that agree, it gives
the smaller of their radii instead of a small R_sel.
"""

from __future__ import annotations

import numpy as np

from .bounds import phi_inv


def switch_radii(sigma_sel: float, chosen: int, q_lower: float, q_upper) -> np.ndarray:
    """e_k (K,) for every level k: the smoothed selector cannot pick level k in the open ball of radius e_k
    around x (module docstring); e_chosen = +inf. ``q_lower``: the lower bound of the chosen level's
    probability; ``q_upper`` (K,): upper bounds of every level's (the chosen entry is ignored). Each upper
    bound is first tightened to 1 - q_lower (the probabilities sum to 1), so e_k >= sigma_sel PhiInv(q_lower)."""
    upper = np.minimum(np.asarray(q_upper, dtype=np.float64), 1.0 - float(q_lower))
    with np.errstate(invalid="ignore"):
        switch = sigma_sel * (phi_inv(float(q_lower)) - phi_inv(upper)) / 2.0
    switch = np.where(np.isnan(switch), -np.inf, switch)  # only -inf - (-inf): q_lower = 0 and upper = 0
    switch[chosen] = np.inf
    return switch


def answer_radius(switch, class_radii, chosen: int) -> tuple[float, int]:
    """(R, binding level) with R = min( r_s, min over k != s of max(e_k, r_k) ) (module docstring).

    switch: e_k (K,) from ``switch_radii``; class_radii: r_k (K,), each level's Cohen radius of the answer y
    (0 where its lower bound is <= 1/2; +inf or any value at a level that cannot bind is fine); chosen: s.
    The binding level is the index of the smallest term (s when r_s is the minimum or ties it)."""
    switch = np.asarray(switch, dtype=np.float64)
    radii = np.asarray(class_radii, dtype=np.float64)
    terms = np.maximum(switch, radii)
    terms[chosen] = radii[chosen]
    binding = int(chosen if terms[chosen] <= terms.min() else terms.argmin())
    return float(terms[binding]), binding
