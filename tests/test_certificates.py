"""The statistics of ALGORITHMS.md section 1, checked against scipy and against closed forms."""

import math

import numpy as np
import pytest
from scipy.stats import beta, binom, binomtest, norm

from insta_rs.certificates import (
    clopper_pearson_lower,
    clopper_pearson_upper,
    cohen_radius,
    floor_to,
    predict_is_confident,
)
from insta_rs.errors import ConfigError
from insta_rs.smoothing import check_certify_settings


@pytest.mark.parametrize("k,n,alpha", [(1, 10, 0.05), (50, 100, 0.001), (99_000, 100_000, 0.001), (7, 7, 0.01)])
def test_clopper_pearson_lower_is_the_beta_quantile(k, n, alpha):
    assert clopper_pearson_lower(k, n, alpha) == pytest.approx(beta.ppf(alpha, k, n - k + 1), rel=1e-12)


def test_clopper_pearson_closed_forms():
    # all successes: P[Bin(n, p) = n] = p^n = alpha  =>  p_lower = alpha^(1/n); symmetric for the upper bound
    for n in (1, 10, 1000):
        assert clopper_pearson_lower(n, n, 0.001) == pytest.approx(0.001 ** (1 / n), rel=1e-10)
        assert clopper_pearson_upper(0, n, 0.001) == pytest.approx(1 - 0.001 ** (1 / n), rel=1e-10)
    assert clopper_pearson_lower(0, 10, 0.05) == 0.0
    assert clopper_pearson_upper(10, 10, 0.05) == 1.0


def test_clopper_pearson_lower_is_exact_tail_inversion():
    # the bound p solves P[Bin(n, p) >= k] = alpha
    k, n, alpha = 83, 100, 0.01
    p = clopper_pearson_lower(k, n, alpha)
    assert binom.sf(k - 1, n, p) == pytest.approx(alpha, rel=1e-8)


def test_cohen_radius():
    assert cohen_radius(0.5, 0.9) == pytest.approx(0.5 * norm.ppf(0.9))
    assert cohen_radius(0.5, 0.5) == 0.0
    assert cohen_radius(0.5, 0.3) == 0.0


@pytest.mark.parametrize("c1,c2,alpha", [(60, 40, 0.05), (70, 30, 0.001), (520, 480, 0.05), (10, 0, 0.001), (0, 0, 0.1)])
def test_predict_test_agrees_with_scipy_binomtest(c1, c2, alpha):
    expected = c1 + c2 > 0 and binomtest(c1, c1 + c2, 0.5).pvalue <= alpha
    assert predict_is_confident(c1, c2, alpha) == expected


def test_floor_never_rounds_up():
    rng = np.random.default_rng(0)
    for value in rng.uniform(0, 3, size=1000):
        rounded = floor_to(float(value), 6)
        assert rounded <= value and value - rounded < 1e-6
    assert math.isnan(floor_to(float("nan")))


def test_floor_never_exceeds_values_just_below_a_multiple_of_its_step():
    """Just below k * 1e-6, ``value * 1e6`` can round up to k: the result must still not exceed the value, and
    must be the multiple below it (k - 1) * 1e-6, a value a file writes back exactly."""
    assert floor_to(2.9300829999999998) == 2.930082
    rng = np.random.default_rng(1)
    ks = np.concatenate([np.arange(1, 20_001), rng.integers(1, 5_000_000, size=20_000)])
    rounded_up_naively = 0
    for k in ks.tolist():
        value = k / 1e6
        for _ in range(3):  # one, two and three units in the last place below k * 1e-6
            value = math.nextafter(value, 0.0)
            result = floor_to(value)
            assert result <= value, (k, value, result)
            assert result == (k - 1) / 1e6 and repr(result) == repr(round(result, 6))
            rounded_up_naively += math.floor(value * 1e6) / 1e6 > value
    assert rounded_up_naively > 100  # the case is common: the check above is not vacuous


@pytest.mark.parametrize("sigma,n0,n,alpha,setting", [
    (0.0, 10, 10, 0.1, "sigma"), (float("nan"), 10, 10, 0.1, "sigma"), (-1.0, 10, 10, 0.1, "sigma"),
    (0.5, 0, 10, 0.1, "n0"), (0.5, 10, 0, 0.1, "n"),
    (0.5, 10, 10, 0.0, "alpha"), (0.5, 10, 10, 1.0, "alpha"),
])
def test_bad_certify_settings_are_one_line_config_errors(sigma, n0, n, alpha, setting):
    with pytest.raises(ConfigError) as info:
        check_certify_settings(sigma, n0, n, alpha)
    message = str(info.value)
    assert message.startswith(setting + "=") and "\n" not in message
