"""Sampling, CERTIFY and PREDICT on an analytic base classifier whose smoothed probabilities are exact.

For a linear classifier f(x) = [w.x + b > 0], P[f(x + sigma e) = 1] = Phi((w.x + b) / (sigma |w|)):
the smoothed classifier is f itself and its exact robust radius is the distance |w.x + b| / |w|.
"""

import numpy as np
import pytest
import torch
from scipy.stats import binom, norm

from insta_rs.certificates import ABSTAIN
from insta_rs.smoothing import Smooth, row_generator


class Halfspace(torch.nn.Module):
    def __init__(self, w: torch.Tensor, b: float):
        super().__init__()
        self.register_buffer("w", w.flatten())
        self.b = b
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        score = x.flatten(1) @ self.w + self.b
        return torch.stack([-score, score], dim=1)  # class 1 iff score > 0


def make_halfspace(dim=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(dim, generator=g)
    return Halfspace(w, 0.1), w


def point_at_distance(w, distance, side=1):
    """A point x (1x4x4) with signed distance `distance` to the hyperplane w.x + 0.1 = 0."""
    unit = w / w.norm()
    x0 = -0.1 * w / w.norm() ** 2  # on the hyperplane
    return (x0 + side * distance * unit).view(1, 4, 4)


def test_counts_match_the_exact_smoothed_probability():
    model, w = make_halfspace()
    smooth = Smooth(model, 2, batch_size=777)
    for distance, sigma in [(0.1, 0.25), (0.3, 0.5), (0.0, 1.0)]:
        x = point_at_distance(w, distance)
        n = 20_000
        counts = smooth.sample_counts(x, sigma, n, row_generator(0, 1))
        p = norm.cdf(distance / sigma)
        assert counts.sum() == n
        assert abs(counts[1].item() / n - p) < 5 * np.sqrt(p * (1 - p) / n) + 1e-9


def test_batched_counts_with_per_row_sigma():
    model, w = make_halfspace()
    smooth = Smooth(model, 2, batch_size=500)
    xs = torch.stack([point_at_distance(w, 0.2), point_at_distance(w, 0.4, side=-1), point_at_distance(w, 0.05)])
    sigmas = torch.tensor([0.1, 0.5, 1.0])
    n = 10_000
    counts = smooth.sample_counts(xs, sigmas, n, row_generator(0, 2))
    assert counts.shape == (3, 2) and (counts.sum(1) == n).all()
    exact = [norm.cdf(0.2 / 0.1), norm.cdf(-0.4 / 0.5), norm.cdf(0.05 / 1.0)]
    for row, p in zip(counts, exact):
        assert abs(row[1].item() / n - p) < 5 * np.sqrt(p * (1 - p) / n) + 1e-9
    # 3 inputs x 10,000 draws in chunks of 500: the inputs share forward passes
    assert model.calls == 3 * n // 500


def test_same_generator_seed_gives_same_counts():
    model, w = make_halfspace()
    smooth = Smooth(model, 2, batch_size=256)
    x = point_at_distance(w, 0.1)
    a = smooth.sample_counts(x, 0.5, 3000, row_generator(7, 3))
    b = smooth.sample_counts(x, 0.5, 3000, row_generator(7, 3))
    c = smooth.sample_counts(x, 0.5, 3000, row_generator(7, 4))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_certified_radius_never_exceeds_the_true_distance_beyond_alpha():
    """Over many trials the radius exceeds the exact robust radius in at most an alpha fraction
    (Clopper-Pearson is conservative, so the observed rate is usually well below alpha)."""
    model, w = make_halfspace()
    smooth = Smooth(model, 2, batch_size=1000)
    sigma, alpha, trials, n = 0.5, 0.2, 300, 400
    distance = 0.3
    x = point_at_distance(w, distance)
    violations, certified = 0, 0
    for t in range(trials):
        cert = smooth.certify(x, sigma, 20, n, alpha, row_generator(123, t))
        if cert.predict != ABSTAIN:
            certified += 1
            assert cert.predict == 1
            violations += cert.radius > distance
    assert certified > trials * 0.9
    # an exact binomial bound on the number of violations at rate alpha (false failure rate 1e-4)
    assert violations <= binom.ppf(1 - 1e-4, trials, alpha)
    # and the bound is not vacuous: the radius is a sizeable fraction of the true distance
    cert = smooth.certify(x, sigma, 100, 20_000, 0.001, row_generator(1, 1))
    assert 0.7 * distance < cert.radius <= distance


def test_abstains_at_the_boundary_and_predict_abstains_too():
    model, w = make_halfspace()
    smooth = Smooth(model, 2)
    x = point_at_distance(w, 0.0)
    cert = smooth.certify(x, 0.5, 100, 2000, 0.001, row_generator(0, 0))
    assert cert.predict == ABSTAIN and cert.radius == 0.0
    assert smooth.predict(x, 0.5, 2000, 0.001, row_generator(0, 0)) == ABSTAIN


def test_predict_is_wrong_at_most_alpha():
    """Base classifier with known class probabilities: class 1 wins with p = Phi(d/sigma) slightly above 1/2.
    PREDICT may abstain, but returns class 0 (wrong) in at most alpha of trials."""
    model, w = make_halfspace()
    smooth = Smooth(model, 2, batch_size=1000)
    x = point_at_distance(w, 0.02)
    alpha, trials = 0.1, 200
    wrong = sum(smooth.predict(x, 0.5, 300, alpha, row_generator(5, t)) == 0 for t in range(trials))
    assert wrong <= binom.ppf(1 - 1e-4, trials, alpha)


def test_noise_is_float32_even_for_half_inputs():
    model, w = make_halfspace()
    seen = []
    model.register_forward_pre_hook(lambda m, args: seen.append(args[0].dtype))
    Smooth(model, 2).sample_counts(point_at_distance(w, 0.1).half(), 0.5, 10, row_generator(0, 0))
    assert seen == [torch.float32]


# -- how the noise is drawn: threads change nothing; noise="split" is its own reproducible stream -------------

class Recorder(torch.nn.Module):
    """Records every chunk it sees (the noisy inputs) and answers class 0."""

    def __init__(self):
        super().__init__()
        self.chunks = []

    def forward(self, x):
        self.chunks.append(x.detach().clone())
        return torch.zeros(x.shape[0], 2)


def noisy_inputs(batch_size, rows=5, n0=10, n=300, **options):
    """Every noisy input of certify_batch on ``rows`` inputs (padding dropped), in the order drawn."""
    model = Recorder()
    smooth = Smooth(model, 2, batch_size=batch_size, **options)
    xs = torch.rand(rows, 1, 4, 4, generator=torch.Generator().manual_seed(3))
    smooth.certify_batch(xs, [0.25 + 0.1 * i for i in range(rows)], n0, n, 0.001,
                         [row_generator(9, i) for i in range(rows)])
    return torch.cat(model.chunks)[:rows * (n0 + n)]


def test_noise_threads_change_no_draw():
    """Several inputs per chunk (each its own generator, blocks straddling chunks): 1, 2 or 3 threads draw
    the very same noisy inputs, bit for bit."""
    one = noisy_inputs(256, noise_threads=1)
    assert torch.equal(one, noisy_inputs(256, noise_threads=2))
    assert torch.equal(one, noisy_inputs(256, noise_threads=3))


def test_split_noise_is_reproducible_and_independent_of_batch_size_and_threads():
    """noise="split" (stripes of NOISE_STRIPE draws from their own generators): the same draws whatever the
    batch size and thread count, other draws than the default stream."""
    split = noisy_inputs(256, n=700, noise="split", noise_threads=1)
    assert torch.equal(split, noisy_inputs(100, n=700, noise="split", noise_threads=2))
    assert torch.equal(split, noisy_inputs(1000, n=700, noise="split", noise_threads=3))
    assert not torch.equal(split, noisy_inputs(256, n=700))


@pytest.mark.parametrize("noise", ["stream", "split"])
def test_noise_is_standard_normal(noise):
    """x = 0, sigma = 1: the noisy inputs are the draws themselves; mean 0, variance 1, no stripe repeated."""
    model = Recorder()
    Smooth(model, 2, batch_size=1000, noise=noise).sample_counts(torch.zeros(1, 4, 4), 1.0, 3000, row_generator(0, 0))
    draws = torch.cat(model.chunks)[:3000].double()
    values = draws.flatten()
    assert abs(values.mean().item()) < 5 / np.sqrt(values.numel())
    assert abs(values.var().item() - 1) < 5 * np.sqrt(2 / values.numel())
    assert len({tuple(row.flatten().tolist()) for row in draws}) == 3000


def test_split_counts_match_the_exact_smoothed_probability():
    model, w = make_halfspace()
    smooth = Smooth(model, 2, batch_size=777, noise="split")
    x, sigma, n = point_at_distance(w, 0.1), 0.25, 20_000
    counts = smooth.sample_counts(x, sigma, n, row_generator(0, 1))
    p = norm.cdf(0.1 / sigma)
    assert counts.sum() == n and abs(counts[1].item() / n - p) < 5 * np.sqrt(p * (1 - p) / n)


@pytest.mark.parametrize("kwargs,name", [({"noise": "fast"}, "noise"), ({"noise_threads": 0}, "noise_threads"),
                                         ({"noise_threads": 1.5}, "noise_threads")])
def test_bad_noise_settings_name_the_setting(kwargs, name):
    with pytest.raises(ValueError, match=f"^{name}="):
        Smooth(torch.nn.Linear(2, 2), 2, **kwargs)
