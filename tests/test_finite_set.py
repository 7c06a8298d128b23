"""Finite noise-level sets (SOUND.md 3a): bounds, the cascade and best-level radii, and their validity.

Independent answers: scipy formulas written out by hand, a deterministic base classifier whose counts are
known exactly, and a simulation on analytic smoothed classifiers. The simulation's base classifiers depend
on one coordinate u only and are piecewise constant in it (a half-space, a slab, three bands), so
p_sigma(u, c) is a sum of normal-CDF differences and the rule's answer at every point is known exactly;
the true robust radius is the distance along u to the nearest point where the rule's answer differs.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import beta, norm

from insta_rs.certificates import ABSTAIN, clopper_pearson_lower, clopper_pearson_upper
from insta_rs.certificates.finite_set import (
    best_level_radius,
    cascade_radius,
    level_bounds,
    statement_alpha,
)
from insta_rs.errors import ConfigError
from insta_rs.search.finite_set import BestLevelSigma, CascadeSigma
from insta_rs.smoothing import Smooth, row_generator

LEVELS = np.array([1.0, 0.5, 0.25])


# -- bounds and the alpha split ----------------------------------------------------------------------

def test_alpha_split_and_bounds_match_the_scalar_clopper_pearson():
    alpha, n = 0.01, 200
    counts = np.array([[120, 50, 30], [0, 200, 0], [70, 70, 60]])
    candidates = np.array([0, 1, 2])
    each = statement_alpha(alpha, 3, 3)
    assert each == pytest.approx(alpha / 12)
    p_lower, p_upper = level_bounds(candidates, counts, n, alpha)
    for k in range(3):
        lower = clopper_pearson_lower(int(counts[k, candidates[k]]), n, each)
        assert p_lower[k] == pytest.approx(lower, abs=1e-14)
        for c in range(3):
            upper = clopper_pearson_upper(int(counts[k, c]), n, each)
            if c != candidates[k]:
                upper = min(upper, 1 - lower)  # the free tightening
            assert p_upper[k, c] == pytest.approx(upper, abs=1e-14), (k, c)
    assert p_upper[1, 1] == 1.0 and p_upper[1, 0] == pytest.approx(1 - each ** (1 / n))
    # a batch of inputs gives the same bounds as one input at a time
    lo2, hi2 = level_bounds(np.stack([candidates, candidates]), np.stack([counts, counts]), n, alpha)
    assert np.array_equal(lo2[1], p_lower) and np.array_equal(hi2[0], p_upper)


def test_cascade_and_best_level_against_hand_computed_values():
    p0 = 0.6
    z0 = norm.ppf(p0)
    candidates = np.array([0, 1, 1])
    p_lower = np.array([0.45, 0.8, 0.97])
    p_upper = np.array([[0.52, 0.30, 0.20], [0.15, 0.85, 0.10], [0.02, 0.98, 0.03]])
    # cascade: level 0 not confident (0.45 < 0.6); stops at level 1 with class 1
    r_plus = 0.5 * (norm.ppf(0.8) - z0)
    r_minus = 1.0 * (z0 - norm.ppf(0.52))  # level 0, class 0 (the binding one of classes 0 and 2)
    cert = cascade_radius(LEVELS, candidates, p_lower, p_upper, p0)
    assert (cert.predict, cert.level) == (1, 1)
    assert cert.radius == pytest.approx(min(r_plus, r_minus), rel=1e-12)
    assert cert.label == ("lower@1" if r_plus <= r_minus else "upper@0") == "upper@0"
    # best level: confident levels 1 and 2 (class 1); R_plus is the larger of their terms; R_minus over all
    plus = max(0.5 * (norm.ppf(0.8) - z0), 0.25 * (norm.ppf(0.97) - z0))
    minus = min(s * (z0 - norm.ppf(p)) for s, row in zip(LEVELS, p_upper) for c, p in enumerate(row) if c != 1)
    cert = best_level_radius(LEVELS, candidates, p_lower, p_upper, p0)
    assert cert.predict == 1 and cert.radius == pytest.approx(min(plus, minus), rel=1e-12)
    assert cert.level == (1 if 0.5 * (norm.ppf(0.8) - z0) >= 0.25 * (norm.ppf(0.97) - z0) else 2)
    assert cert.label == "upper@0"
    # the best-level radius never exceeds the smallest level's cap
    assert cert.radius <= 0.25 * (z0 - norm.ppf(0.03)) + 1e-12


def test_cascade_is_not_capped_by_the_smallest_level_but_best_level_is():
    p0 = 0.5
    candidates = np.array([0, 0, 1])
    p_lower = np.array([0.99, 0.9, 0.9])      # level 0 confident in class 0; level 2 confident in class 1
    p_upper = np.array([[1.0, 0.01], [1.0, 0.1], [0.1, 1.0]])
    cascade = cascade_radius(LEVELS, candidates, p_lower, p_upper, p0)
    assert cascade.predict == 0 and cascade.radius == pytest.approx(norm.ppf(0.99)) and cascade.label == "lower@0"
    grid = best_level_radius(LEVELS, candidates, p_lower, p_upper, p0)
    assert grid.predict == ABSTAIN and grid.radius == 0.0 and grid.label == "upper@2"


def test_edges_give_no_nan():
    p0 = 0.5
    # nothing confident (p_lower = 0): abstain, limited by nothing
    cert = cascade_radius(LEVELS, [0, 0, 0], [0.0, 0.0, 0.0], np.ones((3, 2)), p0)
    assert (cert.predict, cert.radius, cert.label) == (ABSTAIN, 0.0, "none")
    # an upper bound of 1 above the stopping level: R_minus = -inf -> abstain, no NaN
    cert = cascade_radius(LEVELS, [0, 1, 1], [0.3, 0.9, 0.9], [[1.0, 0.4], [0.1, 1.0], [0.1, 1.0]], p0)
    assert cert.predict == ABSTAIN and cert.radius == 0.0 and cert.label == "upper@0"
    # an upper bound of 0 gives +inf on that term, never NaN
    cert = best_level_radius(LEVELS, [1, 1, 1], [0.9, 0.9, 0.9], [[0.0, 1.0]] * 3, p0)
    assert cert.predict == 1 and math.isfinite(cert.radius) and cert.label.startswith("lower")
    with pytest.raises(ValueError):
        cascade_radius([0.25, 0.5, 1.0], [0, 0, 0], [0.9] * 3, np.zeros((3, 2)), p0)  # not descending
    with pytest.raises(ConfigError):
        best_level_radius(LEVELS, [0, 0, 0], [0.9] * 3, np.zeros((3, 2)), 1.0)


# -- validity on analytic smoothed classifiers -------------------------------------------------------

class Bands:
    """Base classifier of one coordinate u: class ``classes[i]`` on the i-th interval cut by ``cuts``."""

    def __init__(self, cuts, classes):
        self.cuts = np.asarray(cuts, dtype=float)
        self.classes = list(classes)
        self.num_classes = max(classes) + 1

    def probabilities(self, u) -> np.ndarray:
        """p_sigma_k(u, c) exactly, shape (..., K, C): sums of Phi((right - u)/s) - Phi((left - u)/s)."""
        u = np.asarray(u, dtype=float)[..., None]
        edges = np.concatenate([[-np.inf], self.cuts, [np.inf]])
        p = np.zeros(u.shape[:-1] + (len(LEVELS), self.num_classes))
        for i, c in enumerate(self.classes):
            p[..., c] += norm.cdf((edges[i + 1] - u) / LEVELS) - norm.cdf((edges[i] - u) / LEVELS)
        return p

    def answer(self, u, p0: float, rule: str) -> np.ndarray:
        """The population rule's answer: cascade -> its class (-1 abstain); grid -> the class every confident
        level agrees on, -1 if none is confident, -2 if two confident levels disagree (then some rule that
        answers with a confident level could answer either, which the certificate must exclude)."""
        confident = self.probabilities(u) > p0                   # (..., K, C)
        any_level = confident.any(axis=-1)                       # (..., K)
        if rule == "cascade":
            first = np.argmax(any_level, axis=-1)
            row = np.take_along_axis(confident, first[..., None, None], axis=-2)[..., 0, :]
            return np.where(any_level.any(axis=-1), np.argmax(row, axis=-1), -1)
        per_class = confident.any(axis=-2)                       # (..., C)
        count = per_class.sum(axis=-1)
        return np.where(count == 0, -1, np.where(count > 1, -2, np.argmax(per_class, axis=-1)))

    def robust_radius(self, u: float, y: int, p0: float, rule: str) -> float:
        """Distance from u to the nearest point where the rule does not answer y (0 if it does not at u):
        a fine scan in both directions, then bisection on the first bracket."""
        if self.answer(u, p0, rule) != y:
            return 0.0
        best = np.inf
        for sign in (1.0, -1.0):
            steps = np.arange(0.0, 6.0, 1e-3)
            bad = np.flatnonzero(self.answer(u + sign * steps, p0, rule) != y)
            if bad.size == 0:
                continue
            good_d, bad_d = steps[bad[0] - 1], steps[bad[0]]
            for _ in range(50):
                mid = 0.5 * (good_d + bad_d)
                good_d, bad_d = (mid, bad_d) if self.answer(u + sign * mid, p0, rule) == y else (good_d, mid)
            best = min(best, bad_d)
        return best


SCENARIOS = {
    # half-space, p0 = 0.7: only the smallest level is confident, so R_plus is tight (Lipschitz is exact)
    "half-space": (Bands([0.0], [0, 1]), 0.2, 0.7),
    # slab outside the band at u = 0.8: the two small levels can become confident in the band within 0.2,
    # so the best-level R_minus is tight
    "slab-outside": (Bands([-0.6, 0.6], [0, 1, 0]), 0.8, 0.5),
    # slab centre, p0 = 0.6: the top level's candidate (class 0) is not the answer (class 1), so the radius
    # needs the upper bound of a level's own candidate
    "slab-centre": (Bands([-0.6, 0.6], [0, 1, 0]), 0.0, 0.6),
    # three bands (C = 3)
    "three-bands": (Bands([0.0, 0.5], [0, 1, 2]), 0.3, 0.5),
}


def simulate(bands: Bands, u: float, p0: float, rule: str, alpha: float, trials: int, seed: int,
             n0: int = 100, n: int = 1000, point_estimates: bool = False):
    """Certify ``trials`` times from multinomial counts at the exact probabilities; return (violation rate,
    largest excess of a certified radius over the true radius, mean certified radius)."""
    rng = np.random.default_rng(seed)
    p = bands.probabilities(u)                                         # (K, C)
    selection = np.stack([rng.multinomial(n0, p[k], size=trials) for k in range(len(LEVELS))], axis=1)
    counts = np.stack([rng.multinomial(n, p[k], size=trials) for k in range(len(LEVELS))], axis=1)
    candidates = selection.argmax(axis=-1)
    p_lower, p_upper = level_bounds(candidates, counts, n, alpha)
    if point_estimates:  # a deliberately wrong certificate, to show the test has power
        p_upper = counts / n
        p_lower = np.take_along_axis(p_upper, candidates[..., None], axis=-1)[..., 0]
    radius_of = cascade_radius if rule == "cascade" else best_level_radius
    truth, violations, excess, radii = {}, 0, 0.0, []
    for t in range(trials):
        cert = radius_of(LEVELS, candidates[t], p_lower[t], p_upper[t], p0)
        radii.append(cert.radius)
        if cert.predict == ABSTAIN:
            continue
        if cert.predict not in truth:
            truth[cert.predict] = bands.robust_radius(u, cert.predict, p0, rule)
        if cert.radius > truth[cert.predict]:
            violations += 1
            excess = max(excess, cert.radius - truth[cert.predict])
    return violations / trials, excess, float(np.mean(radii))


@pytest.mark.parametrize("rule", ["cascade", "grid"])
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_certified_radius_exceeds_the_true_radius_at_most_alpha_of_the_time(scenario, rule):
    bands, u, p0 = SCENARIOS[scenario]
    alpha, trials = 0.2, 2000
    rate, excess, mean_radius = simulate(bands, u, p0, rule, alpha, trials, 
                                          seed=2 * sorted(SCENARIOS).index(scenario) + (rule == "grid"))
    assert rate <= alpha, (f"{scenario}/{rule}: certified radius above the true robust radius in {rate:.3f} of "
                           f"{trials} trials (allowed {alpha}), by up to {excess:.4f}")
    if scenario != "slab-centre" or rule == "cascade":
        assert mean_radius > 0.02, f"{scenario}/{rule}: the certificate is vacuous (mean radius {mean_radius})"


@pytest.mark.parametrize("scenario, rule", [("half-space", "cascade"), ("half-space", "grid"),
                                            ("slab-outside", "grid")])
def test_the_simulation_catches_radii_from_point_estimates(scenario, rule):
    bands, u, p0 = SCENARIOS[scenario]
    rate, excess, _ = simulate(bands, u, p0, rule, 0.2, 2000, seed=7, point_estimates=True)
    assert rate > 0.2 and excess > 0.01, (rate, excess)  # the validity test (alpha = 0.2) would fail


# -- the sigma methods -------------------------------------------------------------------------------

class NoiseScale(torch.nn.Module):
    """At x = 0 reads the noise level from ||z|| / sqrt(D) (D = 1024, relative spread ~2%): class 0 above
    0.7, class 1 in (0.35, 0.7], class 2 below. Levels 1.0, 0.5, 0.25 are then unanimous in classes 0, 1, 2."""

    def forward(self, z):
        scale = z.flatten(1).norm(dim=1) / math.sqrt(z[0].numel())
        out = torch.zeros(z.shape[0], 3)
        out[:, 0] = (scale > 0.7).float()
        out[:, 1] = ((scale > 0.35) & (scale <= 0.7)).float()
        out[:, 2] = (scale <= 0.35).float()
        return out


def test_methods_against_exact_counts():
    smooth = Smooth(NoiseScale(), 3, batch_size=2048)
    calls = []
    original = smooth.sample_counts
    smooth.sample_counts = lambda x, s, num, g=None: calls.append((x.shape[0], num)) or original(x, s, num, g)
    x = torch.zeros(1, 32, 32)
    n0, n, alpha, p0 = 50, 1000, 0.001, 0.5
    lower = (alpha / (3 * 4)) ** (1 / n)  # CP lower of n/n at alpha / (K (C + 1))
    cascade = CascadeSigma(levels=[0.25, 1.0, 0.5], p0=p0)
    assert cascade.levels == [1.0, 0.5, 0.25]
    row = cascade.certify(smooth, x, n0, n, alpha, row_generator(0, 0))
    assert calls == [(3, n0), (3, n)]  # all levels in one call per phase
    assert (row.predict, row.sigma, row.extra) == (0, 1.0, {"level": 0, "limited_by": "lower@0"})
    assert row.radius == pytest.approx(1.0 * (norm.ppf(lower) - norm.ppf(p0)), rel=1e-9)
    assert row.p_lower == pytest.approx(lower) and row.guarantee == "sound"
    assert row.search_draws == 2 * (n0 + n)
    # best level: level 0 has the largest term, but levels 1 and 2 are confident in other classes
    row = BestLevelSigma(levels=[1.0, 0.5, 0.25], p0=p0).certify(smooth, x, n0, n, alpha, row_generator(0, 0))
    assert row.predict == ABSTAIN and row.radius == 0.0 and row.extra == {"level": 0, "limited_by": "upper@1"}
    # a single level is Cohen's CERTIFY with the bound at alpha / (C + 1)
    row = BestLevelSigma(levels=[0.5], p0=0.5).certify(smooth, x, n0, n, alpha, row_generator(0, 0))
    assert row.predict == 1
    assert row.radius == pytest.approx(0.5 * norm.ppf(beta.ppf(alpha / 4, n, 1)), rel=1e-9)


class HalfSpace(torch.nn.Module):
    """Class 1 where z_0 > 0, else class 0."""

    def forward(self, z):
        positive = (z.flatten(1)[:, 0] > 0).float()
        return torch.stack([1 - positive, positive], dim=1)


@pytest.mark.parametrize("sampling", ["fixed", "union", "anytime"])
@pytest.mark.parametrize("method_class, rule", [(CascadeSigma, "cascade"), (BestLevelSigma, "grid")])
def test_methods_are_valid_end_to_end_on_a_linear_classifier(method_class, rule, sampling):
    """Also staged (SOUND.md 3e): every statement's share split over the stages, best bounds over the looks."""
    from insta_rs.certificates.sequential import SequentialPlan

    bands, u, p0 = SCENARIOS["half-space"]
    truth = bands.robust_radius(u, 1, p0, rule)
    smooth = Smooth(HalfSpace(), 2, batch_size=4096)
    if sampling != "fixed":
        smooth.sequential = SequentialPlan(bound_kind=sampling, first=100, tolerance=0.01)
    method = method_class(levels=LEVELS.tolist(), p0=p0)
    x = torch.zeros(1, 1, 4)
    x[0, 0, 0] = u
    alpha, trials = 0.2, 150
    rows = [method.certify(smooth, x, 50, 1000, alpha, row_generator(11, i)) for i in range(trials)]
    over = [r.radius - truth for r in rows if r.predict == 1 and r.radius > truth]
    assert all(r.predict in (1, ABSTAIN) for r in rows)
    assert len(over) <= alpha * trials, f"{len(over)} of {trials} radii above {truth:.4f}, by up to {max(over):.4f}"
    assert np.mean([r.radius for r in rows]) > 0.3 * truth


@pytest.mark.parametrize("knobs", [{"levels": []}, {"levels": [1.0, -0.5]}, {"levels": [0.5, 0.5]},
                                   {"levels": 0.5}, {"p0": 0.4}, {"p0": 1.0}])
def test_bad_settings_raise_one_line_config_errors(knobs):
    from insta_rs.cli import build_group

    for method_class in (CascadeSigma, BestLevelSigma):
        with pytest.raises(ConfigError) as error:  # the library names the field, the entry point adds the group
            build_group({"_target_": f"insta_rs.search.finite_set.{method_class.__name__}", **knobs}, "sigma_search")
        message = str(error.value)
        assert "\n" not in message and any(message.startswith(f"sigma_search.{key}=") for key in knobs), message


@pytest.mark.parametrize("name, cls", [("cascade", CascadeSigma), ("grid", BestLevelSigma)])
def test_config_files(compose, name, cls):
    from hydra.utils import instantiate

    method = instantiate(compose("certify", ["ckpt_path=x.ckpt", f"sigma_search={name}"]).sigma_search)
    assert isinstance(method, cls) and method.name == name and method.guarantee == "sound"
    assert method.levels == [1.0, 0.5, 0.25] and method.p0 == 0.5
