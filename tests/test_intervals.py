"""The intervals over test inputs (insta_rs.intervals, docs/statistics.md).

Exact binomial intervals are checked against scipy and closed forms; the bootstrap intervals by their coverage on
synthetic certification tables drawn from known per-input probabilities (pure numpy, no model): each simulated
table draws N test inputs from a population of input types, and for each input whether it is answered
correctly and, if so, its radius; the true certified accuracy at r and the true ACR are sums over the types.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy.stats import binom, binomtest

from insta_rs import intervals

# the population: input types with their share, the chance of a correct answer, the mean radius of a correct
# answer (radius ~ mean * Exp(1)); for two rows A and B certified on the same inputs
SHARE = np.array([0.3, 0.3, 0.25, 0.15])
CORRECT_A, MEAN_A = np.array([0.95, 0.8, 0.5, 0.1]), np.array([0.8, 0.5, 0.3, 0.2])
CORRECT_B, MEAN_B = np.array([0.9, 0.75, 0.35, 0.05]), np.array([0.7, 0.5, 0.3, 0.2])
RADII = (0.0, 0.25, 0.5, 1.0)
# 400 tables estimate a coverage of 0.95 to +-0.011 (one standard error): 93-97% is about two either side; the
# seeds are fixed, so the tests are deterministic
N, PAIRED_N, TABLES, RESAMPLES = 200, 500, 400, 1000


def truth(correct: np.ndarray, mean: np.ndarray) -> tuple[np.ndarray, float]:
    """(certified accuracy at each of RADII, ACR) of the population: P(correct and radius >= r), E[radius * correct]."""
    acc = np.array([np.sum(SHARE * correct * np.exp(-r / mean)) for r in RADII])
    return acc, float(np.sum(SHARE * correct * mean))


def simulate(seed: int, tables: int = TABLES, n: int = N):
    """Per-input values (tables, n, len(RADII) + 1) of rows A and B on the same inputs: the indicators correct and
    radius >= r, then radius * correct. The rows share the input type; B reuses A's uniform (which decides
    correctness) and exponential (behind the radius) for a random half of the inputs and draws its own for the
    rest, so they are positively correlated with many discordant inputs (radius ~ mean * Exp(1) either way)."""
    rng = np.random.default_rng(seed)
    kind = rng.choice(len(SHARE), p=SHARE, size=(tables, n))
    shared = rng.random((tables, n)) < 0.5
    u, e = rng.random((tables, n)), rng.exponential(size=(tables, n))
    draws = [(u, e), (np.where(shared, u, rng.random((tables, n))), np.where(shared, e, rng.exponential(size=(tables, n))))]
    rows = []
    for (correct, mean), (uniform, exponential) in zip(((CORRECT_A, MEAN_A), (CORRECT_B, MEAN_B)), draws):
        right = uniform < correct[kind]
        radius = np.where(right, mean[kind] * exponential, 0.0)
        rows.append(np.stack([right & (radius >= r) for r in RADII] + [radius], axis=-1).astype(float))
    return rows


# ----------------------------------------------------------------------------------------- exact intervals


@pytest.mark.parametrize("k,n", [(0, 1), (1, 1), (0, 7), (3, 7), (7, 7), (1, 100), (50, 100), (300, 500), (499, 500)])
def test_binomial_interval_is_scipys_exact_interval(k, n):
    exact = binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")
    assert intervals.binomial_interval(k, n) == pytest.approx((exact.low, exact.high), rel=1e-9, abs=1e-12)
    exact90 = binomtest(k, n).proportion_ci(confidence_level=0.9, method="exact")
    assert intervals.binomial_interval(k, n, 0.9) == pytest.approx((exact90.low, exact90.high), rel=1e-9, abs=1e-12)


def test_all_correct_and_all_abstain_columns_are_one_sided_without_warnings():
    """k = n: [(0.025) ** (1 / n), 1]; k = 0: [0, 1 - 0.025 ** (1 / n)]: exact, no NaN, no warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for n in (1, 6, 100, 10000):
            assert intervals.binomial_interval(n, n) == pytest.approx((0.025 ** (1 / n), 1.0), rel=1e-12)
            assert intervals.binomial_interval(0, n) == pytest.approx((0.0, 1 - 0.025 ** (1 / n)), rel=1e-12)
        lo, hi = intervals.binomial_interval(np.array([0, 5, 10]), 10)
        assert np.isfinite(lo).all() and np.isfinite(hi).all() and lo[0] == 0.0 and hi[2] == 1.0
        # the bootstrap of a constant column: its value, no NaN
        assert intervals.mean_interval(np.zeros(50)) == (0.0, 0.0)
        assert intervals.paired_difference(np.ones(20), np.ones(20)) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError):
        intervals.binomial_interval(3, 2)


def test_exact_interval_covers_every_true_fraction_at_least_95_percent():
    """Clopper-Pearson's guarantee, summed exactly over the binomial distribution on a grid of true fractions."""
    n = 60
    k = np.arange(n + 1)
    lo, hi = intervals.binomial_interval(k, n)
    for p in np.linspace(0.001, 0.999, 197):
        covered = (lo <= p) & (p <= hi)
        assert binom.pmf(k, n, p)[covered].sum() >= 0.95 - 1e-12


# --------------------------------------------------------------------------------------- coverage by simulation


def as_columns(tables: np.ndarray) -> np.ndarray:
    """(tables, n, K) -> (n, tables * K): every table's columns side by side, so one call of the library's
    vectorised bootstrap gives every table's interval (the tables share the resampled positions, which leaves
    each table's coverage what it is: the tables are independent draws)."""
    return tables.transpose(1, 0, 2).reshape(tables.shape[1], -1)


def test_intervals_cover_the_truth_in_93_to_97_percent_of_simulated_tables():
    """Certified accuracy at each radius (exact binomial), ACR (bootstrap over inputs): each covers its population
    value in 93-97% of 400 simulated tables of 200 inputs."""
    rows, _ = simulate(1)
    acc_true, acr_true = truth(CORRECT_A, MEAN_A)
    k = rows[:, :, :len(RADII)].sum(axis=1)  # (tables, radii)
    lo, hi = intervals.binomial_interval(k, N)
    coverage = ((lo <= acc_true) & (acc_true <= hi)).mean(axis=0)
    assert ((0.93 <= coverage) & (coverage <= 0.97)).all(), coverage
    lo, hi = intervals.mean_interval(rows[:, :, -1].T, resamples=RESAMPLES)  # one column per table
    acr_coverage = ((lo <= acr_true) & (acr_true <= hi)).mean()
    assert 0.93 <= acr_coverage <= 0.97, acr_coverage


def test_paired_differences_cover_the_truth_and_are_narrower_than_unpaired():
    """A minus B at every radius and for ACR, on the same inputs: the paired bootstrap interval covers the true
    difference in 93-97% of the tables, and is narrower than the unpaired one (the rows are positively correlated)."""
    a, b = simulate(3, n=PAIRED_N)
    (acc_a, acr_a), (acc_b, acr_b) = truth(CORRECT_A, MEAN_A), truth(CORRECT_B, MEAN_B)
    true = np.append(acc_a - acc_b, acr_a - acr_b)
    _, lo, hi = intervals.paired_difference(as_columns(a), as_columns(b), resamples=RESAMPLES, seed=3)
    lo, hi = lo.reshape(TABLES, -1), hi.reshape(TABLES, -1)
    coverage = ((lo <= true) & (true <= hi)).mean(axis=0)
    assert ((0.93 <= coverage) & (coverage <= 0.97)).all(), coverage
    _, ulo, uhi = intervals.unpaired_difference(as_columns(a[:50]), as_columns(b[:50]), resamples=RESAMPLES)
    unpaired = (uhi - ulo).reshape(50, -1).mean(axis=0)
    assert ((hi - lo)[:50].mean(axis=0) < 0.8 * unpaired).all()


# --------------------------------------------------------------------------------------------- the envelope


def test_the_envelope_is_recomputed_in_every_resample():
    """The vectorised difference from an envelope equals a plain loop over the same resamples that takes the
    maximum of the members' means afresh in each; the plain point estimate is the row minus the sample maximum."""
    rng = np.random.default_rng(5)
    row, m1, m2 = (rng.random((30, 3)) < p for p in (0.55, 0.5, 0.5))
    difference, lo, hi = intervals.envelope_difference(row, [m1, m2], resamples=300, seed=7)
    assert difference == pytest.approx(row.mean(0) - np.maximum(m1.mean(0), m2.mean(0)))
    replicates = []
    for counts in intervals.resample_counts(30, 300, 7):
        for c in counts:
            means = [np.repeat(x, c, axis=0).mean(axis=0) for x in (row, m1, m2)]
            replicates.append(means[0] - np.maximum(means[1], means[2]))
    expected = np.quantile(np.array(replicates), [0.025, 0.975], axis=0)
    assert lo == pytest.approx(expected[0]) and hi == pytest.approx(expected[1])
    # the envelope's own interval: the Bonferroni union of its members' exact intervals
    k = np.array([[m1[:, j].sum() for j in range(3)], [m2[:, j].sum() for j in range(3)]])
    env_lo, env_hi = intervals.envelope_interval(k, [30, 30])
    one = [intervals.binomial_interval(k[i], 30, 0.975) for i in range(2)]
    assert env_lo == pytest.approx(np.maximum(one[0][0], one[1][0]))
    assert env_hi == pytest.approx(np.maximum(one[0][1], one[1][1]))


def test_resamples_are_reproducible_and_count_every_draw():
    first = np.concatenate(list(intervals.resample_counts(13, 50, 3)))
    again = np.concatenate(list(intervals.resample_counts(13, 50, 3)))
    assert (first == again).all() and first.shape == (50, 13) and (first.sum(axis=1) == 13).all()
    assert not (first == np.concatenate(list(intervals.resample_counts(13, 50, 4)))).all()


def test_inputs_to_halve():
    """The smallest N' whose exact interval at the same fraction is at most half as wide; a mean's: 4 N."""
    n = intervals.inputs_to_halve_binomial(50, 100)
    half = lambda k, m: (lambda lo_hi: (lo_hi[1] - lo_hi[0]) / 2)(intervals.binomial_interval(k, m))
    assert half(0.5 * n, n) <= half(50, 100) / 2 < half(0.5 * (n - 1), n - 1)
    assert 350 < n < 420  # about 4x, a little less: the exact interval is wider than 1/sqrt(n) at small n
    zero = intervals.inputs_to_halve_binomial(0, 100)
    assert half(0, zero) <= half(0, 100) / 2 < half(0, zero - 1) and zero < 250  # at the edge the width is ~1/n
    assert intervals.inputs_to_halve_mean(120) == 480


def test_round_outward_contains_the_interval():
    assert intervals.round_outward(0.12341, 0.56781, 3) == (0.123, 0.568)
    assert intervals.round_outward(-0.0101, 0.0, 2) == (-0.02, 0.0)
