"""Semi-elastic sigma(x) and its sound radius (ALGORITHMS.md 3c, SOUND.md 3c).

Independent answers: Cohen's closed form, a Monte Carlo estimate of the Neyman-Pearson worst case built
from the likelihood ratio itself (no chi-square anywhere), the closed-form probability of Cohen's
half-space (which the worst case must dominate), SOUND.md's published figure, brute-force numpy
nearest-neighbour distances.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.special import ndtr, ndtri
from scipy.stats import norm

from insta_rs.certificates import clopper_pearson_lower, cohen_radius, floor_to
from insta_rs.certificates.semi_elastic import (
    _xi_ncx2,
    semi_elastic_radius,
    worst_case_other_probability,
    worst_case_over_interval,
)
from insta_rs.data import Synthetic
from insta_rs.errors import ConfigError
from insta_rs.search.base import SearchContext
from insta_rs.search.semi_elastic import SIGMA_LOG_SLACK, SemiElasticSigma
from insta_rs.smoothing import Smooth, noise_sigma


def cohen_xi(p_b, radius, sigma0):
    return norm.cdf(norm.ppf(p_b) + radius / sigma0)


# ---------------------------------------------------------------------------------------------------
# The radius


def test_sound_md_figure_d3072():
    """SOUND.md 3c: d = 3072, sigma0 = 0.5, pA = 0.99 -> 1.16 at r = 0, about 0.53 at r = 0.05."""
    at_zero = semi_elastic_radius(0.99, 0.5, 0.0, 3072)
    assert at_zero == pytest.approx(0.5 * norm.ppf(0.99), rel=1e-12)
    assert round(at_zero, 2) == 1.16
    at_005 = semi_elastic_radius(0.99, 0.5, 0.05, 3072)
    assert 0.52 <= at_005 <= 0.535
    # it is the edge: the condition holds at the reported radius and fails just beyond it
    assert worst_case_over_interval(0.01, at_005, 0.5, 0.05, 3072)[0] < 0.5
    assert worst_case_over_interval(0.01, at_005 * 1.001, 0.5, 0.05, 3072)[0] >= 0.5


@pytest.mark.parametrize("p_a,sigma0,d", [(0.99, 0.5, 3072), (0.8, 0.25, 64), (0.999, 1.0, 2), (0.6, 0.12, 150528)])
def test_equals_cohen_as_r_goes_to_zero(p_a, sigma0, d):
    cohen = cohen_radius(sigma0, p_a)
    assert semi_elastic_radius(p_a, sigma0, 0.0, d) == cohen
    # r -> 0 goes through sigma1/sigma0 within ~1e-9 of 1, where only the quadrature is usable
    tiny = semi_elastic_radius(p_a, sigma0, 1e-9, d)
    assert cohen * (1 - 2e-4) <= tiny <= cohen
    small = semi_elastic_radius(p_a, sigma0, 1e-6, d)
    assert small <= tiny + 1e-12 and small >= cohen * (1 - 0.05)


@pytest.mark.parametrize("p_a,sigma0,d", [(0.99, 0.5, 3072), (0.9, 0.25, 64), (0.999, 1.0, 3)])
def test_shrinks_as_r_grows(p_a, sigma0, d):
    rates = [0.0, 1e-5, 1e-4, 1e-3, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0]
    radii = [semi_elastic_radius(p_a, sigma0, r, d) for r in rates]
    assert all(b <= a for a, b in zip(radii, radii[1:])), radii
    assert radii[-1] < 0.9 * radii[0]            # the rate really costs radius
    assert radii[0] == cohen_radius(sigma0, p_a)


def test_never_above_cohen_and_tight():
    rng = np.random.default_rng(7)
    for _ in range(30):
        p_a = float(1 - 10 ** rng.uniform(-5, math.log10(0.45)))
        sigma0 = float(rng.uniform(0.05, 1.5))
        r = float(10 ** rng.uniform(-5, 0.5))
        d = int(rng.choice([1, 2, 5, 64, 784, 3072, 150528]))
        radius = semi_elastic_radius(p_a, sigma0, r, d)
        cohen = cohen_radius(sigma0, p_a)
        assert 0.0 <= radius <= cohen, (p_a, sigma0, r, d)
        if radius > 0:
            assert worst_case_over_interval(1 - p_a, radius, sigma0, r, d)[0] < 0.5
        beyond = radius * (1 + 3e-4) + 1e-9
        if beyond < cohen:
            assert worst_case_over_interval(1 - p_a, beyond, sigma0, r, d)[0] >= 0.5, (p_a, sigma0, r, d)


def test_abstain_and_bad_arguments():
    assert semi_elastic_radius(0.5, 0.5, 0.01, 10) == 0.0
    assert semi_elastic_radius(0.3, 0.5, 0.01, 10) == 0.0
    with pytest.raises(ValueError):
        semi_elastic_radius(0.9, 0.5, -0.1, 10)
    with pytest.raises(ValueError):
        semi_elastic_radius(0.9, 0.5, 0.1, 0)
    with pytest.raises(ValueError):
        worst_case_other_probability(0.1, 1.0, 0.5, -1.0, 3)


# ---------------------------------------------------------------------------------------------------
# The worst-case probability xi


def test_cohen_value_at_equal_sigma():
    p_b = np.array([1e-4, 0.01, 0.2, 0.45])
    radius = np.array([0.0, 0.3, 1.0, 0.05])
    got = worst_case_other_probability(p_b, radius, 0.5, 0.5, 3072)
    np.testing.assert_allclose(got, cohen_xi(p_b, radius, 0.5), rtol=1e-12)


@pytest.mark.parametrize("d,p_b,radius,sigma0,sigma1", [
    (2, 0.10, 0.30, 0.5, 0.35),   # sigma1 < sigma0: a ball
    (3, 0.20, 0.20, 0.5, 0.70),   # sigma1 > sigma0: the complement of a ball
    (5, 0.05, 0.40, 1.0, 0.80),
    (4, 0.30, 0.10, 0.4, 0.50),
    (2, 0.02, 0.05, 0.5, 1.00),   # sigma1 = 2 sigma0, tiny lambda
])
def test_worst_case_matches_neyman_pearson_monte_carlo(d, p_b, radius, sigma0, sigma1):
    """Build the worst-case set from its definition: the top-p_B likelihood-ratio set under N(x0, sigma0^2 I),
    estimated by Monte Carlo; its probability under N(x1, sigma1^2 I) must match xi."""
    rng = np.random.default_rng(1234 + d)
    n = 400_000
    x1 = np.zeros(d)
    x1[0] = radius

    def log_ratio(z):
        near_x0 = (z**2).sum(1) / (2 * sigma0**2)
        return d * math.log(sigma0 / sigma1) + near_x0 - ((z - x1) ** 2).sum(1) / (2 * sigma1**2)

    llr0 = log_ratio(sigma0 * rng.standard_normal((n, d)))
    threshold = np.quantile(llr0, 1 - p_b)
    estimate = float(np.mean(log_ratio(x1 + sigma1 * rng.standard_normal((n, d))) > threshold))
    xi = worst_case_other_probability(p_b, radius, sigma0, sigma1, d)
    sd = math.sqrt(xi * (1 - xi) / n + math.exp(2 * threshold) * p_b * (1 - p_b) / n)
    assert abs(estimate - xi) < 5 * sd, (estimate, xi, sd)
    assert abs(xi - cohen_xi(p_b, radius, sigma0)) > 10 * sd   # the case tells the branches from Cohen's


def test_worst_case_dominates_cohen_half_space():
    """Neyman-Pearson: no set with probability p_B at x0 does better than xi at x1; Cohen's half-space
    {z1 >= sigma0 PhiInv(1 - p_B)} has probability Phi((R - sigma0 PhiInv(1 - p_B)) / sigma1) there."""
    rng = np.random.default_rng(3)
    size = 400
    d = rng.choice([1, 2, 3, 10, 64, 3072], size=size)
    p_b = 10 ** rng.uniform(-6, math.log10(0.49), size=size)
    radius = rng.uniform(0, 2, size=size)
    sigma0 = rng.uniform(0.1, 1, size=size)
    sigma1 = sigma0 * np.exp(rng.choice([-1, 1], size=size) * 10 ** rng.uniform(-8, 0, size=size))
    for dim in np.unique(d):
        sel = d == dim
        xi = worst_case_other_probability(p_b[sel], radius[sel], sigma0[sel], sigma1[sel], int(dim))
        half_space = ndtr((radius[sel] - sigma0[sel] * ndtri(1 - p_b[sel])) / sigma1[sel])
        assert np.all(xi >= half_space - 1e-9), dim


def test_ratio_near_one_is_finite_and_continues_the_trend():
    """SOUND.md's trap: sigma1/sigma0 = 1 +- 1e-7 and closer (lambda0 ~ 2.5e11 .. 2.5e19, where scipy's ncx2
    gives NaN). xi is smooth in delta = sigma1/sigma0 - 1 through Cohen's value at 0: its slope and
    curvature, measured with ncx2 where it is reliable (delta = 1e-5, lambda0 ~ 2.5e7), must predict the
    values the quadrature returns near 1."""
    d, p_b, radius, sigma0 = 3072, 0.01, 0.05, 0.5
    cohen = cohen_xi(p_b, radius, sigma0)

    def xi_ncx2(delta):
        return _xi_ncx2(np.array([p_b]), np.array([radius]), np.array([sigma0]), np.array([sigma0 * (1 + delta)]), d)[0]

    h = 1e-5
    up, down = xi_ncx2(h), xi_ncx2(-h)
    slope = (up - down) / (2 * h)
    curvature = ((up + down) / 2 - cohen) / h**2
    assert slope > 0.01                          # xi crosses Cohen's value: not monotone around sigma0 ...
    assert curvature > 100                       # ... and rises on both sides
    for delta in (1e-7, -1e-7, 1e-8, -1e-8, 1e-9, -1e-9):
        xi = worst_case_other_probability(p_b, radius, sigma0, sigma0 * (1 + delta), d)
        assert math.isfinite(xi)
        predicted = cohen + slope * delta + curvature * delta**2
        assert abs(xi - predicted) <= 1e-3 * abs(slope * delta), delta
    for delta in (1e-12, -1e-12):
        xi = worst_case_other_probability(p_b, radius, sigma0, sigma0 * (1 + delta), d)
        assert math.isfinite(xi) and abs(xi - cohen) < 1e-12


def test_quadrature_agrees_with_ncx2_where_both_work():
    from insta_rs.certificates.semi_elastic import _xi_quadrature

    rng = np.random.default_rng(11)
    for _ in range(40):
        d = int(rng.choice([1, 2, 5, 64, 784, 3072, 150528]))
        p_b = np.array([10 ** rng.uniform(-6, math.log10(0.49))])
        radius = np.array([rng.uniform(0.01, 2)])
        sigma0 = np.array([rng.uniform(0.1, 1)])
        lam = 10 ** rng.uniform(4.5, 9)
        s1sq = sigma0**2 - rng.choice([-1, 1]) * sigma0 * radius / math.sqrt(lam)
        if s1sq[0] <= 0:
            continue
        sigma1 = np.sqrt(s1sq)
        a = _xi_ncx2(p_b, radius, sigma0, sigma1, d)[0]
        b = _xi_quadrature(p_b, radius, sigma0, sigma1, d)[0]
        assert abs(a - b) < 1e-7, (d, p_b, radius, sigma0, sigma1, a, b)


def test_interval_maximum_is_at_the_ends_or_cohen():
    """The docstring's claim behind worst_case_over_interval, on a random sample of dense sigma1 grids."""
    rng = np.random.default_rng(5)
    for _ in range(8):
        d = int(rng.choice([1, 3, 64, 3072, 150528]))
        p_b = float(10 ** rng.uniform(-5, math.log10(0.45)))
        radius = float(10 ** rng.uniform(-2, 0.3))
        sigma0 = float(rng.uniform(0.1, 1))
        spread = float(10 ** rng.uniform(-6, 0))
        r = spread / radius
        grid = sigma0 * np.exp(np.linspace(-spread, spread, 81))
        dense = worst_case_other_probability(p_b, radius, sigma0, grid, d).max()
        assert dense <= worst_case_over_interval(p_b, radius, sigma0, r, d)[0] + 1e-9


# ---------------------------------------------------------------------------------------------------
# The sigma rule and the method


class RecordingSource:
    """A DataSource stand-in that records which splits were read."""

    def __init__(self, source):
        self.source = source
        self.read = []

    def split(self, name, train_transform=False):
        self.read.append(name)
        return self.source.split(name, train_transform)


class ConstantClassifier(torch.nn.Module):
    def __init__(self, label: int, num_classes: int = 3):
        super().__init__()
        self.label, self.num_classes = label, num_classes

    def forward(self, x):
        logits = torch.zeros(x.shape[0], self.num_classes)
        logits[:, self.label] = 1.0
        return logits


def brute_force_mean_knn(points: np.ndarray, train: np.ndarray, k: int) -> np.ndarray:
    dist = np.sqrt(((points[:, None, :] - train[None, :, :]) ** 2).sum(-1))
    return np.sort(dist, axis=1)[:, :k].mean(1)


@pytest.fixture(scope="module")
def synthetic():
    return Synthetic(num_classes=3, input_shape=(1, 8, 8), train_size=301, test_size=20, seed=2)


def test_m_is_the_leave_one_out_median_of_training_inputs_only(synthetic):
    source = RecordingSource(synthetic)
    method = SemiElasticSigma(sigma_b=0.25, r=0.1, k=5, m_sample=10_000)
    method.prepare(SearchContext(source=source, device="cpu"))
    assert source.read == ["train"]               # prepare never sees a test input
    train = np.stack([synthetic.split("train")[i][0].numpy().ravel() for i in range(301)]).astype(np.float64)
    dist = np.sqrt(((train[:, None] - train[None]) ** 2).sum(-1))
    np.fill_diagonal(dist, np.inf)
    expected = np.median(np.sort(dist, axis=1)[:, :5].mean(1))
    assert method.m == pytest.approx(expected, rel=1e-5)
    # fixed before testing: certifying inputs in any order neither changes m nor sigma
    test = torch.stack([synthetic.split("test")[i][0] for i in range(20)])
    first = method.sigma_of(test)
    smooth = Smooth(ConstantClassifier(1), 3, batch_size=100)
    for i in reversed(range(3)):
        method.certify(smooth, test[i], 10, 50, 0.01, torch.Generator().manual_seed(i))
    assert method.m == pytest.approx(expected, rel=1e-5)
    torch.testing.assert_close(method.sigma_of(test.flip(0)).flip(0), first, rtol=0, atol=0)
    np.testing.assert_allclose(method.mean_knn_distance(test).numpy(),
                               brute_force_mean_knn(test.reshape(20, -1).double().numpy(), train, 5), rtol=1e-12)


@pytest.mark.parametrize("clip", [(None, None), (0.2, 0.3)])
def test_sigma_rule_is_r_semi_elastic(synthetic, clip):
    r = 0.4
    method = SemiElasticSigma(sigma_b=0.25, r=r, k=4, sigma_min=clip[0], sigma_max=clip[1], m=1.5)
    train = torch.stack([synthetic.split("train")[i][0] for i in range(301)])
    method.set_reference(train)
    gen = torch.Generator().manual_seed(0)
    base = torch.cat([train[:30] + 0.05 * torch.randn(30, 1, 8, 8, generator=gen),
                      0.5 + 3.0 * torch.randn(30, 1, 8, 8, generator=gen)])   # near and far from the data
    worst = 0.0
    for scale in (1e-4, 1e-2, 0.3, 3.0):
        other = base + scale * torch.randn(base.shape, generator=gen)
        gap = (method.sigma_of(base).log() - method.sigma_of(other).log()).abs()
        dist = (base - other).reshape(len(base), -1).double().norm(dim=1)
        assert torch.all(gap <= r * dist * (1 + 1e-9) + 1e-12)
        worst = max(worst, float((gap / (r * dist)).max()))
    if clip == (None, None):
        assert worst > 0.5                          # the check is sharp enough to catch a rate off by 2
    else:
        sig = method.sigma_of(base)
        assert float(sig.min()) >= 0.2 - 1e-12 and float(sig.max()) <= 0.3 + 1e-12


def test_rows_are_sound_with_the_semi_elastic_radius(synthetic):
    method = SemiElasticSigma(sigma_b=None, r=0.05, k=3, max_train=120)
    method.prepare(SearchContext(source=synthetic, device="cpu", trained_sigma=0.3))
    assert method.sigma_b == 0.3 and method.train_inputs.shape == (120, 64)
    assert method.name == "semi_elastic" and method.guarantee == "sound"
    assert method.extra_columns == ("cohen_radius",)
    x = synthetic.split("test")[0][0]
    row = method.certify(Smooth(ConstantClassifier(2), 3, batch_size=256), x, 20, 500, 0.001,
                         torch.Generator().manual_seed(0))
    sigma0 = float(method.sigma_of(x.unsqueeze(0))[0])
    p_lower = clopper_pearson_lower(500, 500, 0.001)
    assert row.guarantee == "sound" and row.predict == 2 and row.search_draws == 0
    assert row.sigma == sigma0 and row.p_lower == pytest.approx(p_lower)
    assert row.extra["cohen_radius"] == floor_to(cohen_radius(sigma0, p_lower))
    # centred on the sigma the noise was scaled by (float32), as every method's radius is
    assert row.radius == semi_elastic_radius(p_lower, noise_sigma(sigma0), 0.05, 64, log_slack=SIGMA_LOG_SLACK)
    assert 0 < row.radius < row.extra["cohen_radius"]


@pytest.mark.parametrize("sigma_b", [0.12, 0.3])
def test_r_zero_is_cohens_radius_at_the_float32_sigma(synthetic, sigma_b):
    """r = 0: one constant sigma, and the certificate is Cohen's at the sigma the noise was scaled by, float32(sigma_b)
    (at 0.12 that is below 0.12, so the float64 sigma would certify 4e-9 too much; at 0.3 it is above)."""
    constant = SemiElasticSigma(sigma_b=sigma_b, r=0.0, k=3, max_train=120)
    constant.prepare(SearchContext(source=synthetic, device="cpu"))
    x = synthetic.split("test")[0][0]
    row = constant.certify(Smooth(ConstantClassifier(2), 3, batch_size=256), x, 20, 500, 0.001,
                           torch.Generator().manual_seed(0))
    p_lower = clopper_pearson_lower(500, 500, 0.001)
    used = float(np.float32(sigma_b))
    assert row.sigma == sigma_b and row.p_lower == p_lower
    assert row.radius == cohen_radius(used, p_lower) != cohen_radius(sigma_b, p_lower)
    assert (row.radius < cohen_radius(sigma_b, p_lower)) == (used < sigma_b)


def test_config_errors():
    with pytest.raises(ConfigError, match="^r="):
        SemiElasticSigma(sigma_b=0.25, r=-0.1)
    with pytest.raises(ConfigError, match="^k="):
        SemiElasticSigma(sigma_b=0.25, k=0)
    with pytest.raises(ConfigError, match="^sigma_min="):
        SemiElasticSigma(sigma_b=0.25, sigma_min=0.5, sigma_max=0.1)
    method = SemiElasticSigma(sigma_b=None)
    with pytest.raises(ConfigError, match="^sigma_b="):
        method.prepare(SearchContext(source=None, trained_sigma=None))  # trained across sigmas


def test_config_file_instantiates(compose):
    from hydra.utils import instantiate

    cfg = compose("certify", ["ckpt_path=x.ckpt", "sigma_search=semi_elastic", "sigma_search.sigma_b=0.5"])
    method = instantiate(cfg.sigma_search)
    assert isinstance(method, SemiElasticSigma) and method.sigma_b == 0.5 and method.guarantee == "sound"
