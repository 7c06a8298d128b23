"""Statistical validity: seeded simulations that the bounds hold at their stated level.

Each check counts violations over T independent trials and fails when the count exceeds
binom.isf(FALSE_ALARM, T, alpha): if the procedure is valid (violation probability <= alpha), the test
fails with probability below FALSE_ALARM = 1e-7. Each check is also run on a plausible buggy variant
(a normal-approximation bound, a radius from the point estimate) to show the same check catches it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import binom, norm

from insta_rs.certificates import ABSTAIN, clopper_pearson_lower
from insta_rs.smoothing import Smooth

FALSE_ALARM = 1e-7


def allowed(trials: int, alpha: float) -> int:
    return int(binom.isf(FALSE_ALARM, trials, alpha))


def check_rate(name: str, violations: int, trials: int, alpha: float) -> None:
    limit = allowed(trials, alpha)
    assert violations <= limit, (f"{name}: violated in {violations} of {trials} trials ({violations / trials:.4f}); "
                                 f"a level-{alpha} bound allows at most {limit} ({limit / trials:.4f}), "
                                 f"exceeded by {violations - limit}")


def wald_lower(count: int, n: int, alpha: float) -> float:
    """A plausible bug: the normal-approximation (Wald) one-sided lower bound."""
    p = count / n
    return p - norm.ppf(1 - alpha) * np.sqrt(p * (1 - p) / n)


def coverage_violations(bound, p: float, n: int, alpha: float, trials: int, seed: int) -> int:
    counts = np.random.default_rng(seed).binomial(n, p, size=trials)
    lower = {int(c): bound(int(c), n, alpha) for c in np.unique(counts)}
    return int(sum(lower[int(c)] > p for c in counts))


@pytest.mark.parametrize("p", [0.01, 0.3, 0.5, 0.9, 0.99, 0.999])
@pytest.mark.parametrize("n", [10, 100, 1000])
def test_clopper_pearson_lower_bound_covers(p, n):
    alpha, trials = 0.05, 20000
    check_rate(f"Clopper-Pearson lower bound, p={p}, n={n}",
               coverage_violations(clopper_pearson_lower, p, n, alpha, trials, seed=n), trials, alpha)


def test_the_coverage_check_catches_a_wald_bound():
    alpha, trials = 0.05, 20000
    violations = coverage_violations(wald_lower, 0.99, 100, alpha, trials, seed=1)
    with pytest.raises(AssertionError, match="exceeded by"):
        check_rate("Wald", violations, trials, alpha)


class Threshold(torch.nn.Module):
    """f(v) = 1 if the first pixel v > c else 0, on (1, 1, 1) inputs: under N(x, sigma^2),
    P[f = 1] = 1 - Phi((c - x) / sigma) exactly."""

    def __init__(self, c: float):
        super().__init__()
        self.c = c

    def forward(self, x):
        v = x.reshape(x.shape[0], -1)[:, :1]
        return torch.cat([torch.zeros_like(v), (v > self.c).float()], dim=1)


@pytest.mark.parametrize("p_one", [0.5, 0.4])
def test_predict_is_wrong_at_most_alpha(p_one):
    """At p_one = 0.5 (a tie) every answer is unjustified; at 0.4 answering 1 is wrong."""
    sigma, alpha, n, trials = 1.0, 0.1, 100, 1500
    c = float(norm.ppf(1 - p_one))  # x = 0: P[f = 1] = 1 - Phi(c) = p_one
    smooth = Smooth(Threshold(c), 2, batch_size=1000, device="cpu")
    x = torch.zeros(1, 1, 1)
    answers = [smooth.predict(x, sigma, n, alpha, torch.Generator().manual_seed(i)) for i in range(trials)]
    wrong = sum(a != ABSTAIN for a in answers) if p_one == 0.5 else sum(a == 1 for a in answers)
    check_rate(f"PREDICT at P[class 1]={p_one}", wrong, trials, alpha)


class HalfSpace(torch.nn.Module):
    """f(x) = [w.x > b]: the smoothed classifier is the same half-space at every sigma."""

    def __init__(self, w, b: float):
        super().__init__()
        self.w = torch.tensor(w, dtype=torch.float32)
        self.b = b

    def forward(self, x):
        side = (x.reshape(x.shape[0], -1) @ self.w > self.b).float().view(-1, 1)
        return torch.cat([1 - side, side], dim=1)


def certify_violations(radius_of, trials: int, alpha: float) -> int:
    """Certify x whose true pA = 0.99 under a half-space; a violation is a radius beyond the exact
    distance to the boundary, or any positive radius for the wrong class."""
    sigma, w, b = 0.5, [0.6, 0.8], 0.0
    distance = sigma * float(norm.ppf(0.99))
    x = torch.tensor([0.6, 0.8]).view(1, 1, 2) * distance  # w.x - b = distance, |w| = 1
    smooth = Smooth(HalfSpace(w, b), 2, batch_size=2000, device="cpu")
    violations = 0
    for i in range(trials):
        predict, radius = radius_of(smooth, x, sigma, alpha, torch.Generator().manual_seed(i))
        if (predict == 1 and radius > distance) or (predict == 0 and radius > 0):
            violations += 1
    return violations


def test_fixed_sigma_certificate_never_exceeds_the_exact_radius():
    alpha, trials = 0.2, 800

    def ours(smooth, x, sigma, alpha, generator):
        cert = smooth.certify(x, sigma, 10, 200, alpha, generator)
        return cert.predict, cert.radius

    check_rate("CERTIFY radius vs exact distance", certify_violations(ours, trials, alpha), trials, alpha)


def test_the_radius_check_catches_a_point_estimate_radius():
    alpha, trials = 0.2, 800

    def point_estimate(smooth, x, sigma, alpha, generator):
        counts = smooth.sample_counts(x, sigma, 200, generator)
        p = min(float(counts[1]) / 200, 1 - 1e-3)
        return (1, sigma * norm.ppf(p)) if p > 0.5 else (ABSTAIN, 0.0)

    with pytest.raises(AssertionError, match="exceeded by"):
        check_rate("point estimate", certify_violations(point_estimate, trials, alpha), trials, alpha)
