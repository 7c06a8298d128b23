"""Confidence intervals over test inputs for the reported numbers (docs/statistics.md).

A certified accuracy, clean accuracy or abstain rate is a fraction k / N of N test inputs: its interval
is the exact two-sided (Clopper-Pearson) binomial interval, built from the one-sided bounds of
``certificates.bounds`` at (1 - confidence) / 2 each:

    [Beta((1 - c) / 2; k, N - k + 1), Beta((1 + c) / 2; k + 1, N - k)],  0 at k = 0 and 1 at k = N,

so an all-correct column (k = N) is [((1 - c) / 2) ** (1 / N), 1] and an all-abstain one (k = 0) is
[0, 1 - ((1 - c) / 2) ** (1 / N)]. Its coverage is at least c for every true fraction.

ACR and differences between rows are means over inputs; their intervals are percentile bootstraps
over inputs: draw N inputs with replacement ``resamples`` times (a fixed ``seed``, so a table is
reproducible), recompute the statistic on each resample, and take the (1 - c) / 2 and (1 + c) / 2
quantiles. Rows certified on the same inputs share every resample (a paired bootstrap), which removes
the variation of the inputs' difficulty that both rows see. In a difference from the envelope of
several rows (a maximum over rows) the maximum is recomputed inside every resample, so which row is
best may change from one resample to the next and the interval carries that choice. Rows on different
inputs get independent resamples (an unpaired interval). The envelope's own interval is the Bonferroni
union of its rows' exact intervals (``envelope_interval``).

Every function is pure: arrays in, arrays out; the defaults live here.
"""

from __future__ import annotations

import math
from typing import Iterator

import numpy as np

from .certificates.bounds import cp_lower, cp_upper

CONFIDENCE = 0.95
RESAMPLES = 2000
SEED = 0
_BLOCK_CELLS = 2_000_000  # resamples x inputs held in memory at once


def binomial_interval(successes, trials, confidence: float = CONFIDENCE):
    """The exact two-sided Clopper-Pearson interval (lo, hi) of a fraction successes / trials at ``confidence``
    (module docstring), elementwise over arrays; floats for scalar input. 0 and 1 exactly at the edges, never
    NaN for 0 <= successes <= trials, trials >= 1."""
    k = np.asarray(successes, dtype=np.float64)
    n = np.asarray(trials, dtype=np.float64)
    if np.any(n < 1) or np.any(k < 0) or np.any(k > n):
        raise ValueError(f"binomial counts out of range: successes={successes}, trials={trials}")
    tail = (1.0 - confidence) / 2.0
    lo, hi = cp_lower(k, n, tail), cp_upper(k, n, tail)
    if lo.ndim == 0:
        return float(lo), float(hi)
    return lo, hi


def resample_counts(n: int, resamples: int = RESAMPLES, seed: int = SEED) -> Iterator[np.ndarray]:
    """The bootstrap's resamples of n inputs, in blocks: arrays (block, n) whose row b counts how often each
    input is drawn in resample b (each row sums to n). The same (n, resamples, seed) give the same blocks."""
    rng = np.random.default_rng(seed)
    block = max(1, min(resamples, _BLOCK_CELLS // max(n, 1)))
    for start in range(0, resamples, block):
        size = min(block, resamples - start)
        draws = rng.integers(0, n, size=(size, n)) + n * np.arange(size)[:, None]
        yield np.bincount(draws.ravel(), minlength=size * n).reshape(size, n)


def bootstrap_means(values, resamples: int = RESAMPLES, seed: int = SEED) -> np.ndarray:
    """Means over the inputs of ``values`` (N inputs x K columns, or N) in every resample: (resamples, K)
    (or (resamples,)). Columns of one array share their resamples."""
    values = np.asarray(values, dtype=np.float64)
    flat = values.reshape(len(values), -1)
    n = len(flat)
    means = np.concatenate([counts @ flat / n for counts in resample_counts(n, resamples, seed)])
    return means.reshape((resamples,) + values.shape[1:])


def percentile_interval(replicates, confidence: float = CONFIDENCE):
    """The (1 - c) / 2 and (1 + c) / 2 quantiles of bootstrap replicates along axis 0: (lo, hi)."""
    tail = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(np.asarray(replicates, dtype=np.float64), [tail, 1.0 - tail], axis=0)
    return (float(lo), float(hi)) if np.ndim(lo) == 0 else (lo, hi)


def mean_interval(values, confidence: float = CONFIDENCE, resamples: int = RESAMPLES, seed: int = SEED):
    """Percentile bootstrap interval of the mean over inputs of ``values`` (N, or N x K): (lo, hi).
    ACR's interval is ``mean_interval(radius * correct)``."""
    return percentile_interval(bootstrap_means(values, resamples, seed), confidence)


def envelope_difference(row, members, confidence: float = CONFIDENCE, resamples: int = RESAMPLES,
                        seed: int = SEED, paired: bool = True):
    """A row minus the envelope of ``members``, with a bootstrap interval.

    ``row``: N inputs x K columns (e.g. the indicators correct and radius >= r, and radius * correct);
    ``members``: M arrays of one shape (N' x K), aligned input by input among themselves. The envelope is
    the maximum over members of their column means; the difference is mean(row) - envelope, per column.
    ``paired`` (the row's inputs are the members' inputs, aligned): every resample draws the same inputs for
    the row and all members. Otherwise (different inputs) the row is resampled on its own inputs and the
    members jointly on theirs. In both cases the maximum is taken afresh in every resample. Returns
    (difference, lo, hi), each of shape (K,) (floats for 1-D inputs). One member: a plain difference."""
    row = np.asarray(row, dtype=np.float64)
    stacked = np.stack([np.asarray(m, dtype=np.float64) for m in members])  # (M, N', ...)
    if stacked.shape[2:] != row.shape[1:] or (paired and stacked.shape[1] != len(row)):
        raise ValueError(f"members of shape {stacked.shape[1:]} are not aligned with the row's {row.shape}")
    count = len(stacked)
    ours = row.reshape(len(row), -1)
    theirs = np.concatenate([m.reshape(stacked.shape[1], -1) for m in stacked], axis=1)  # (N', M K)
    difference = ours.mean(axis=0) - theirs.mean(axis=0).reshape(count, -1).max(axis=0)
    if paired:
        means = bootstrap_means(np.concatenate([ours, theirs], axis=1), resamples, seed)
        row_means, member_means = means[:, :ours.shape[1]], means[:, ours.shape[1]:]
    else:
        row_means, member_means = bootstrap_means(ours, resamples, seed), bootstrap_means(theirs, resamples, seed + 1)
    # rounded to 12 decimals: equal rows give exactly 0, not the +-1e-17 of summing them in another order
    replicates = np.round(row_means - member_means.reshape(resamples, count, -1).max(axis=1), 12)
    difference = np.round(difference, 12)
    lo, hi = percentile_interval(replicates, confidence)
    shape = row.shape[1:]
    return _shaped(difference, shape), _shaped(lo, shape), _shaped(hi, shape)


def paired_difference(a, b, confidence: float = CONFIDENCE, resamples: int = RESAMPLES, seed: int = SEED):
    """mean(a) - mean(b) over the same inputs (rows aligned input by input), with a paired bootstrap interval:
    (difference, lo, hi)."""
    return envelope_difference(a, [b], confidence, resamples, seed)


def unpaired_difference(a, b, confidence: float = CONFIDENCE, resamples: int = RESAMPLES, seed: int = SEED):
    """mean(a) - mean(b) for rows certified on different inputs, each resampled on its own inputs
    (independent resamples): (difference, lo, hi)."""
    return envelope_difference(a, [b], confidence, resamples, seed, paired=False)


def excludes_zero(lo, hi):
    """Whether an interval [lo, hi] lies wholly above or wholly below 0 (a difference that is not a tie)."""
    return (np.asarray(lo) > 0) | (np.asarray(hi) < 0)


def inputs_to_halve_binomial(successes: int, trials: int, confidence: float = CONFIDENCE) -> int:
    """How many inputs would halve the half-width of the Clopper-Pearson interval of successes / trials, at the
    same observed fraction: the smallest N' whose interval at k' = N' * successes / trials is at most half as
    wide (k' may be fractional: the Beta quantiles take any positive parameters)."""
    fraction = successes / trials

    def half_width(n: int) -> float:
        lo, hi = binomial_interval(min(fraction * n, n), n, confidence)
        return (hi - lo) / 2.0

    target = half_width(trials) / 2.0
    low, high = trials, 2 * trials
    while half_width(high) > target:
        low, high = high, 2 * high
    while high - low > 1:  # half_width falls as n grows: bisect
        middle = (low + high) // 2
        low, high = (middle, high) if half_width(middle) > target else (low, middle)
    return high


def inputs_to_halve_mean(trials: int) -> int:
    """How many inputs would halve a bootstrap interval of a mean over ``trials`` inputs: its half-width shrinks
    as 1 / sqrt(N), so four times as many."""
    return 4 * int(trials)


def _shaped(value, shape):
    value = np.asarray(value, dtype=np.float64).reshape(shape)
    return float(value) if value.ndim == 0 else value


def round_outward(lo: float, hi: float, decimals: int) -> tuple[float, float]:
    """An interval rounded outward to ``decimals`` places (lo down, hi up), so the rounded one contains it."""
    scale = 10.0 ** decimals
    return math.floor(lo * scale) / scale, math.ceil(hi * scale) / scale


def envelope_interval(successes, trials, confidence: float = CONFIDENCE):
    """An interval for an envelope, the largest of M fractions successes_j / trials_j (arrays (M, ...) and (M,)):
    [max_j lo_j, max_j hi_j] with each (lo_j, hi_j) the exact binomial interval at confidence 1 - (1 - c) / M
    (Bonferroni). When every fraction lies in its own interval, which happens with probability at least c,
    their maximum lies in this one; it needs no common inputs and is never empty at an all-zero column."""
    k = np.asarray(successes, dtype=np.float64)
    n = np.asarray(trials, dtype=np.float64).reshape((len(k),) + (1,) * (k.ndim - 1))
    lo, hi = binomial_interval(k, np.broadcast_to(n, k.shape), 1.0 - (1.0 - confidence) / len(k))
    lo, hi = np.asarray(lo).max(axis=0), np.asarray(hi).max(axis=0)
    return (float(lo), float(hi)) if lo.ndim == 0 else (lo, hi)
