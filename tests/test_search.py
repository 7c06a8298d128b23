"""Insta-RS test-time sigma search (ALGORITHMS.md 2) on analytic base classifiers.

The base classifier ``Ball`` answers class 0 inside the ball ||z||^2 < tau and, outside, one of 8 other
classes (the argmax of the first 8 coordinates), so no outer class is ever confident. At x = 0 the
probability of class 0 at sigma is exactly the chi-square CDF F_D(tau / sigma^2): the objective's
expectation is known in closed form and its optimum can be computed with scipy, independently of the code.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import beta, chi2, norm

from insta_rs.errors import ConfigError
from insta_rs.search.insta_rs import InstaRSSearch
from insta_rs.smoothing import Smooth, row_generator

SHAPE = (1, 4, 4)  # D = 16
DIM = 16
CLASSES = 9


class Ball(torch.nn.Module):
    """Class 0 where ||z||^2 < tau, or (with ``outer`` set) also where ||z||^2 > outer; else 1 + argmax z[:8].
    Counts forward calls and, if ``record`` is set, keeps every input it sees with the current ``phase``."""

    def __init__(self, tau: float, outer: float | None = None, record: bool = False):
        super().__init__()
        self.tau, self.outer, self.record = tau, outer, record
        self.calls, self.phase, self.seen = 0, "search", []

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        flat = z.flatten(1)
        if self.record:
            self.seen.append((self.phase, flat.clone()))
        r2 = flat.square().sum(1)
        class_zero = r2 < self.tau
        if self.outer is not None:
            class_zero |= r2 > self.outer
        logits = torch.full((flat.shape[0], CLASSES), -1.0)
        logits[torch.arange(flat.shape[0]), 1 + flat[:, :8].argmax(1)] = 0.0
        logits[class_zero, 0] = 1.0
        return logits


def expected_objective(sigmas: np.ndarray, tau: float, m: int, alpha_s: float) -> np.ndarray:
    """Rhat at the expected count m * p0(sigma), p0 = F_{chi2_D}(tau / sigma^2), written with scipy only."""
    p = chi2.cdf(tau / sigmas**2, DIM)
    k = np.round(m * p)
    lower = np.where(k > 0, beta.ppf(alpha_s, np.maximum(k, 1), m - k + 1), 0.0)
    return np.where(lower >= 0.5, sigmas * norm.ppf(np.clip(lower, 1e-300, 1)), -np.inf)


def make_smooth(model: torch.nn.Module, batch_size: int = 4096) -> Smooth:
    return Smooth(model, CLASSES, batch_size=batch_size)


def test_search_finds_the_closed_form_optimum():
    tau = 1.0
    grid = np.exp(np.linspace(math.log(0.05), math.log(2.0), 4000))
    surrogate = expected_objective(grid, tau, 256, 0.05)
    best_sigma, best_value = grid[surrogate.argmax()], surrogate.max()
    assert 0.12 < best_sigma < 0.25  # interior: no start sits on it
    x = torch.zeros(SHAPE)
    draws = {}
    for merge in (True, False):
        method = InstaRSSearch(merge=merge)
        draws[merge] = 0
        for seed in range(4):
            outcome = method.search(make_smooth(Ball(tau)), x, row_generator(seed, 0))
            assert abs(math.log(outcome.sigma / best_sigma)) < 0.12, (merge, seed, outcome.sigma, best_sigma)
            found = expected_objective(np.array([outcome.sigma]), tau, 256, 0.05)[0]
            assert found >= 0.9 * best_value, (merge, seed, found, best_value)
            draws[merge] += outcome.draws
    # merging starts that meet saves draws; at most 10% of Cohen's n0 + n = 100,100 per input here
    assert draws[True] < draws[False] and draws[True] / 4 <= 0.10 * 100_100, draws


def test_every_step_is_one_batched_forward():
    model = Ball(4.0)
    smooth = make_smooth(model, batch_size=4 * 3 * 256)  # one forward pass holds a whole step
    calls = []
    original = smooth.sample_counts

    def recording(x, sigma, num, generator=None):
        calls.append((x.shape[0], torch.as_tensor(sigma).reshape(-1).tolist(), num))
        return original(x, sigma, num, generator)

    smooth.sample_counts = recording
    method = InstaRSSearch()
    outcome = method.search(smooth, torch.zeros(SHAPE), row_generator(1, 0))
    assert len(calls) == outcome.calls <= outcome.steps <= method.steps
    assert model.calls == len(calls)  # one forward pass per step
    assert calls[0][0] == 12  # 4 starts x 3 candidates, all in the first call
    sigmas = [s for _, row_sigmas, _ in calls for s in row_sigmas]
    assert len(sigmas) == len(set(sigmas)) == outcome.evaluations  # every sigma evaluated once
    assert all(num == 256 for _, _, num in calls)
    assert outcome.draws == 256 * len(sigmas)
    assert all(0.05 * (1 - 1e-6) <= s <= 2.0 * (1 + 1e-6) for s in sigmas)


def test_search_draws_are_fresh_for_certification():
    model = Ball(1.0, record=True)
    smooth = make_smooth(model, batch_size=1024)
    original = smooth.certify

    def certify(*args, **kwargs):
        model.phase = "certify"
        return original(*args, **kwargs)

    smooth.certify = certify
    result = InstaRSSearch().certify(smooth, torch.zeros(SHAPE), 100, 2000, 0.001, row_generator(3, 7))
    search = torch.cat([z for phase, z in model.seen if phase == "search"])
    cert = torch.cat([z for phase, z in model.seen if phase == "certify"])
    search = search[search.norm(dim=1) > 0]  # drop the zero padding of last chunks
    cert = cert[cert.norm(dim=1) > 0]
    assert search.shape[0] == result.search_draws and cert.shape[0] == 100 + 2000
    # x = 0, so each input is sigma * e: a reused draw would show as a direction seen twice
    cosine = torch.nn.functional.normalize(cert, dim=1) @ torch.nn.functional.normalize(search, dim=1).T
    assert cosine.max() < 0.999, float(cosine.max())
    # the certificate is CERTIFY at sigma* with the generator's state after the search
    generator = row_generator(3, 7)
    outcome = InstaRSSearch().search(make_smooth(Ball(1.0)), torch.zeros(SHAPE), generator)
    expected = make_smooth(Ball(1.0), batch_size=1024).certify(torch.zeros(SHAPE), outcome.sigma, 100, 2000, 0.001,
                                                               generator)
    assert (result.sigma, result.predict, result.radius) == (outcome.sigma, expected.predict, expected.radius)
    assert result.guarantee == "instance" and result.search_time > 0


def test_same_seed_same_row_and_another_seed_other_draws():
    method = InstaRSSearch()
    x = torch.zeros(SHAPE)
    first = method.certify(make_smooth(Ball(4.0)), x, 50, 500, 0.001, row_generator(5, 2))
    again = method.certify(make_smooth(Ball(4.0)), x, 50, 500, 0.001, row_generator(5, 2))
    assert (first.predict, first.radius, first.sigma, first.search_draws) == \
        (again.predict, again.radius, again.sigma, again.search_draws)
    one = method.search(make_smooth(Ball(4.0)), x, row_generator(5, 2)).visited
    other = method.search(make_smooth(Ball(4.0)), x, row_generator(6, 2)).visited
    assert one != other


def test_best_over_all_starts_beats_a_single_start():
    # class 0 inside ||z||^2 < 1 and outside ||z||^2 > 16: a local optimum near sigma 0.16 and the global one
    # at sigma_max (at sigma = 2, ||z||^2 ~ 64 > 16: class 0 nearly surely, Rhat ~ 2 * 2.27)
    x = torch.zeros(SHAPE)
    local = InstaRSSearch(starts=[0.12]).search(make_smooth(Ball(1.0, outer=16.0)), x, row_generator(0, 0))
    best = InstaRSSearch().search(make_smooth(Ball(1.0, outer=16.0)), x, row_generator(0, 0))
    assert local.sigma < 0.25 and best.sigma == pytest.approx(2.0)
    assert best.rhat > 2 * local.rhat


def test_fallback_when_no_sigma_is_confident():
    model = Ball(0.0)  # never class 0: the 8 outer classes share the draws, no lower bound reaches 1/2
    outcome = InstaRSSearch().search(make_smooth(model), torch.zeros(SHAPE), row_generator(0, 0))
    assert outcome.rhat == -math.inf
    top = max(v[1] for v in outcome.visited.values())
    assert outcome.visited[outcome.sigma][1] == top
    assert outcome.sigma == min(s for s, v in outcome.visited.items() if v[1] == top)
    result = InstaRSSearch().certify(make_smooth(Ball(0.0)), torch.zeros(SHAPE), 50, 500, 0.001, row_generator(0, 0))
    assert result.predict == -1 and result.radius == 0.0


def test_objective_matches_scipy():
    method = InstaRSSearch(m=100, alpha_s=0.1)
    sigmas = np.array([0.5, 0.5, 1.0, 2.0])
    counts = np.array([0, 55, 90, 100])
    values = method.objective(sigmas, counts)
    assert values[0] == -np.inf and values[1] == -np.inf  # CP lower of 55/100 at 0.1 is < 1/2
    for s, k, v in zip(sigmas[2:], counts[2:], values[2:]):
        assert v == pytest.approx(s * norm.ppf(beta.ppf(0.1, k, 100 - k + 1)), rel=1e-12)


@pytest.mark.parametrize("knobs", [
    {"starts": []}, {"starts": [0.5, -1.0]}, {"starts": 0.5}, {"sigma_min": 1.0, "sigma_max": 0.5},
    {"sigma_min": 0.0}, {"m": 0}, {"m": 2.5}, {"steps": 0}, {"eta": 0.0}, {"eta_min": 0.5},
    {"alpha_s": 0.0}, {"alpha_s": 1.0}, {"merge": "yes"},
])
def test_bad_knobs_raise_one_line_config_errors(knobs):
    from insta_rs.cli import build_group

    with pytest.raises(ConfigError) as error:  # the library names the field, the entry point adds the group
        build_group({"_target_": "insta_rs.search.insta_rs.InstaRSSearch", **knobs}, "sigma_search")
    message = str(error.value)
    assert "\n" not in message and any(message.startswith(f"sigma_search.{key}=") for key in knobs), message


def test_defaults_and_config_file(compose):
    from hydra.utils import instantiate

    method = instantiate(compose("certify", ["ckpt_path=x.ckpt", "sigma_search=insta_rs"]).sigma_search)
    default = InstaRSSearch()
    knobs = ("starts", "sigma_min", "sigma_max", "m", "steps", "eta", "eta_min", "alpha_s", "merge")
    assert {k: getattr(method, k) for k in knobs} == {k: getattr(default, k) for k in knobs}
    assert default.starts == [0.12, 0.25, 0.5, 1.0] and default.T == 8 and method.guarantee == "instance"
