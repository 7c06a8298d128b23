"""Sequential certification (SOUND.md 3e): the union-bound schedule, the anytime mixture bound,
the stopping rules, and Monte Carlo checks that the reported bound keeps its level -- and that the
invalid shortcuts (full alpha at every stage, pilot draws counted in the bound) do not."""

import math

import numpy as np
import pytest
from scipy.special import betaln
from scipy.stats import beta, betabinom, binom, norm

from insta_rs.certificates.bounds import clopper_pearson_lower
from insta_rs.certificates.sequential import (
    REASONS,
    AnytimeBound,
    Schedule,
    anytime_lower,
    geometric_schedule,
    log_mixture_martingale,
    make_bound,
    reachable_lower,
    run_sequential,
    sequential_certify,
    should_stop,
    union_lower,
)

# ------------------------------------------------------------------ schedule and union bound


@pytest.mark.parametrize("n_max,alpha,first,factor,weights", [
    (100_000, 0.001, 1000, 2.0, "equal"), (100_000, 0.001, 1000, 2.0, "geometric"), (2000, 0.2, 100, 1.5, "equal"),
    (10, 0.05, 1, 1.01, "geometric"), (500, 0.01, 1000, 2.0, "equal"), (1, 0.5, 1, 3.0, "equal")])
def test_schedule_shape(n_max, alpha, first, factor, weights):
    schedule = geometric_schedule(n_max, alpha, first=first, factor=factor, weights=weights)
    assert schedule.sizes[-1] == schedule.n_max == n_max
    assert schedule.sizes[0] == min(first, n_max)
    assert all(a < b for a, b in zip(schedule.sizes, schedule.sizes[1:]))
    assert math.fsum(schedule.alphas) <= alpha and schedule.alpha == pytest.approx(alpha, rel=1e-9)
    if weights == "geometric":  # shares proportional to stage sizes: the last stage keeps the most
        assert list(schedule.alphas) == sorted(schedule.alphas)


def test_union_lower_is_clopper_pearson_at_the_stage_share():
    schedule = geometric_schedule(10_000, 0.01, first=100, factor=3.0, weights="geometric")
    for s, (n, alpha_s) in enumerate(zip(schedule.sizes, schedule.alphas)):
        for k in (0, 1, n // 2, (9 * n) // 10, n - 1, n):
            assert union_lower(schedule, s, k, n) == clopper_pearson_lower(k, n, alpha_s)
            assert schedule.lower(k, n) == clopper_pearson_lower(k, n, alpha_s)


def test_union_lower_refuses_an_unplanned_look():
    schedule = geometric_schedule(1000, 0.01, first=100)
    with pytest.raises(ValueError, match="^trials="):
        union_lower(schedule, 0, 50, 150)
    with pytest.raises(ValueError, match="^trials="):
        schedule.lower(50, 150)
    with pytest.raises(ValueError, match="^stage_index="):
        union_lower(schedule, len(schedule.sizes), 50, 1000)


@pytest.mark.parametrize("kwargs,field", [
    ({"n_max": 0}, "n_max"), ({"n_max": 2.5}, "n_max"), ({"alpha": 0.0}, "alpha"), ({"alpha": 1.0}, "alpha"),
    ({"alpha": -0.1}, "alpha"), ({"first": 0}, "first"), ({"factor": 1.0}, "factor"), ({"factor": 0.5}, "factor"),
    ({"weights": "linear"}, "weights")])
def test_bad_schedule_values_name_the_field(kwargs, field):
    args = {"n_max": 1000, "alpha": 0.01, "first": 100, "factor": 2.0, "weights": "equal", **kwargs}
    with pytest.raises(ValueError, match=f"^{field}="):
        geometric_schedule(**args)


def test_bad_schedule_and_bound_fields():
    with pytest.raises(ValueError, match="^sizes="):
        Schedule((100, 100), (0.01, 0.01))
    with pytest.raises(ValueError, match="^alphas="):
        Schedule((100, 200), (0.6, 0.6))
    with pytest.raises(ValueError, match="^batch="):
        AnytimeBound(0.01, 1000, batch=0)
    with pytest.raises(ValueError, match="^prior="):
        AnytimeBound(0.01, 1000, prior=(0.0, 1.0))
    with pytest.raises(ValueError, match="^method="):
        make_bound("bonferroni", 1000, 0.01)


# ------------------------------------------------------------------ anytime mixture bound

GRID = [(1, 10), (3, 10), (9, 10), (50, 100), (99, 100), (1, 1000), (700, 1000), (999, 1000),
        (5_000, 10_000), (9_990, 10_000), (90_000, 100_000), (99_999, 100_000), (1, 10**6), (600_000, 10**6),
        (999_000, 10**6), (10**6 - 1, 10**6)]


@pytest.mark.parametrize("alpha", [0.001, 0.2])
@pytest.mark.parametrize("k,n", GRID)
def test_anytime_lower_solves_the_mixture_equation(k, n, alpha):
    """Independent check: M_n(p0) = BetaBinom(k; n, a, b) / Bin(k; n, p0) (binomial coefficients cancel)."""
    def log_m(p0):
        return betabinom.logpmf(k, n, 0.5, 0.5) - binom.logpmf(k, n, p0)

    lower, target = anytime_lower(k, n, alpha), math.log(1 / alpha)
    assert 0 < lower < k / n
    assert log_m(lower) >= target - 1e-7 and log_m(lower) == pytest.approx(target, abs=1e-6)
    assert log_mixture_martingale(k, n, lower) >= target  # rounded down, never up
    above = lower + 1e-6 * (k / n - lower)
    assert log_m(above) < target and log_mixture_martingale(k, n, above) < target


def test_anytime_lower_edges():
    assert anytime_lower(0, 10, 0.01) == anytime_lower(0, 10**6, 0.01) == 0.0
    for n in (1, 10, 1000, 10**6):  # k = n: log M_n = log B(n + a, b) - log B(a, b) - n log p0
        closed = math.exp((betaln(n + 0.5, 0.5) - betaln(0.5, 0.5) - math.log(1 / 0.001)) / n)
        assert anytime_lower(n, n, 0.001) == pytest.approx(closed, rel=1e-12) and anytime_lower(n, n, 0.001) <= closed
    with pytest.raises(ValueError):
        anytime_lower(11, 10, 0.01)
    with pytest.raises(ValueError, match="^alpha="):
        anytime_lower(5, 10, 1.5)


@pytest.mark.parametrize("n", [20, 1000, 100_000])
def test_anytime_lower_is_monotone(n):
    ks = np.unique(np.linspace(0, n, 41).astype(int))
    bounds = [anytime_lower(int(k), n, 0.01) for k in ks]
    assert all(a < b for a, b in zip(bounds, bounds[1:]))
    for k in ks[1:]:
        assert anytime_lower(int(k), n, 0.001) < anytime_lower(int(k), n, 0.01)


@pytest.mark.parametrize("alpha", [0.001, 0.05])
@pytest.mark.parametrize("k,n", GRID)
def test_anytime_versus_clopper_pearson_at_one_n(k, n, alpha):
    """Observed relation: at a single n the anytime bound is looser than Clopper-Pearson at alpha
    (the price of holding for every n) but tighter than Clopper-Pearson at alpha / (20 sqrt(n)):
    it behaves like CP at alpha / (c sqrt(n)) with c from sqrt(pi) (k = n) to ~18 (n = 1e6, mid k)."""
    lower = anytime_lower(k, n, alpha)
    assert clopper_pearson_lower(k, n, alpha / (20 * math.sqrt(n))) < lower < clopper_pearson_lower(k, n, alpha)


# ------------------------------------------------------------------ reachable bound and stopping rules


def test_reachable_lower_is_the_bound_of_all_remaining_successes():
    schedule, anytime = geometric_schedule(10_000, 0.01, first=1000), AnytimeBound(0.01, 10_000, batch=500)
    for k, n in [(600, 1000), (1000, 1000), (7000, 8000)]:
        assert reachable_lower(k, n, schedule) == clopper_pearson_lower(k + 10_000 - n, 10_000, schedule.alphas[-1])
        assert reachable_lower(k, n, anytime) == anytime_lower(k + 10_000 - n, 10_000, 0.01)
        for bound in (schedule, anytime):  # the heuristic projection never exceeds the optimistic one
            assert reachable_lower(k, n, bound, reach_alpha=0.01) <= reachable_lower(k, n, bound)


def test_should_stop_rules():
    bound = AnytimeBound(0.01, 10_000, batch=100)
    assert should_stop(2000, 8000, bound, 1.0, 0.01) == "abstain"  # even 2000 more successes leave <= 1/2
    assert should_stop(4000, 8000, bound, 1.0, 0.01) == "continue"  # optimism: 6000 / 10000 reachable
    assert should_stop(4000, 8000, bound, 1.0, 0.01, reach_alpha=0.01) == "abstain"
    assert should_stop(9000, 9900, bound, 1.0, 0.01) == "certified"  # 100 draws cannot move the radius by 0.01
    assert should_stop(9000, 9900, bound, 1.0, 0.0) == "continue"
    assert should_stop(9000, 10_000, bound, 1.0, 0.0) == "certified"  # n_max always stops
    assert should_stop(5000, 10_000, bound, 1.0, 0.0) == "abstain"
    # radii list (current radius 1.07, reachable 2.17): stop when the next listed radius is out of reach
    assert should_stop(900, 1000, bound, 1.0, 0.0, radii=[0.5, 1.0]) == "certified"  # nothing left above
    assert should_stop(900, 1000, bound, 1.0, 0.0, radii=[0.5, 1.0, 2.0]) == "continue"
    assert should_stop(900, 1000, bound, 1.0, 0.0, radii=[0.5, 3.0, 4.0]) == "certified"
    assert should_stop(900, 1000, bound, 1.0, 0.0, best_lower=0.99) == "certified"  # best earlier look counts
    with pytest.raises(ValueError, match="^sigma="):
        should_stop(900, 1000, bound, 0.0, 0.01)
    with pytest.raises(ValueError, match="^tolerance="):
        should_stop(900, 1000, bound, 1.0, -0.01)


@pytest.mark.parametrize("method", ["union", "anytime"])
def test_radii_mode_certifies_a_p_a_just_above_one_half_at_r_0_as_fixed_n_does(method):
    """p_A = 0.52, sigma 0.25: fixed n = 100,000 certifies (CP at alpha of 52,000 / 100,000 is 0.515), with a radius
    far below the first listed radius. Radii mode must not stop at the first look because 0.25 is out of reach:
    "certified at all" (r = 0) is its first target, so it draws on until certified, then stops."""
    n_max, alpha, sigma, radii = 100_000, 0.001, 0.25, [0.25, 0.5, 0.75, 1.0]
    assert clopper_pearson_lower(52 * n_max // 100, n_max, alpha) > 0.5  # fixed n certifies it
    result = sequential_certify(_recording_draw(52, []), n_max, alpha, method, sigma=sigma, radii=radii,
                                reach_alpha=0.001)
    assert result.decision == "certified" and 0 < result.radius(sigma) < radii[0], result
    assert result.reason in ("radii", "n_max")
    bound = make_bound(method, n_max, alpha)
    # the look at which it stopped is the first where the bound exceeds 1/2: not a draw more, not a draw less
    before = [n for n in bound.looks() if n < result.draws]
    assert all(bound.lower((52 * n) // 100, n) <= 0.5 for n in before) and result.p_lower > 0.5
    # an input whose best case stays at or below 1/2 still abstains at once; a clearly certified one still stops
    assert should_stop(400, 1000, bound, sigma, 0.0, radii=radii, reach_alpha=0.001) == "abstain"
    assert should_stop(999, 1000, bound, sigma, 0.0, radii=[0.75]) == "continue"  # 0.54 now, 0.75 in reach
    assert should_stop(999, 1000, bound, sigma, 0.0, radii=[5.0]) == "certified"  # certified, 5.0 out of reach


def test_radii_mode_continues_while_not_certified_and_certifiable():
    """The rule itself: not yet certified (bound <= 1/2) but a bound above 1/2 is still reachable -> continue,
    even when every listed radius is out of reach (before r = 0 was a target this stopped with "abstain")."""
    bound = geometric_schedule(100_000, 0.001, first=1000)
    assert bound.lower(520, 1000) <= 0.5 < reachable_lower(520, 1000, bound, reach_alpha=0.001)
    assert should_stop(520, 1000, bound, 0.25, 0.0, radii=[0.25, 0.5], reach_alpha=0.001) == "continue"


# ------------------------------------------------------------------ driver


def _recording_draw(percent, requests):
    """Deterministic draws: floor(percent * m / 100) successes among m, every call recorded."""
    def draw(m):
        requests.append(m)
        return (percent * m) // 100
    return draw


@pytest.mark.parametrize("method", ["union", "anytime"])
def test_driver_looks_only_where_planned(method):
    requests = []
    result = sequential_certify(_recording_draw(97, requests), 5000, 0.01, method, tolerance=0.0, batch=300)
    looks = make_bound(method, 5000, 0.01, batch=300).looks()
    assert tuple(np.cumsum(requests)) == looks[:len(requests)] and result.draws == 5000 == looks[-1]
    assert (result.decision, result.reason, result.looks) == ("certified", "n_max", len(looks))
    assert result.radius(0.5) == pytest.approx(0.5 * norm.ppf(result.p_lower))
    early = sequential_certify(_recording_draw(20, []), 5000, 0.01, method, batch=300, reach_alpha=0.01)
    assert (early.decision, early.reason, early.draws, early.radius(1.0)) == ("abstain", "early_abstain", 300, 0.0)


def test_driver_rejects_impossible_counts():
    with pytest.raises(ValueError, match="returned"):
        sequential_certify(lambda m: m + 1, 1000, 0.01)


# ------------------------------------------------------------------ Monte Carlo validity

N_SEQ, MC_ALPHA, MC_N_MAX, MC_BATCH = 2000, 0.2, 2000, 100
SLACK = 3 * math.sqrt(MC_ALPHA * (1 - MC_ALPHA) / N_SEQ)  # three binomial standard errors


def _violation_rate(bound, p, seed, **rule):
    """Fraction of sequences whose reported bound exceeds the true p under the real driver."""
    rng = np.random.default_rng(seed)
    results = [run_sequential(lambda m: int(rng.binomial(m, p)), bound, **rule) for _ in range(N_SEQ)]
    assert all(r.reason in REASONS and r.draws <= bound.n_max for r in results)
    return np.mean([r.p_lower > p for r in results]), np.mean([r.draws for r in results])


@pytest.mark.parametrize("method", ["union", "anytime"])
@pytest.mark.parametrize("p", [0.6, 0.9, 0.99])
@pytest.mark.parametrize("rule", [{"tolerance": 0.05}, {"tolerance": 0.1, "reach_alpha": 0.5},
                                  {"tolerance": 0.0, "radii": [0.5, 1.0, 2.0], "reach_alpha": 0.5}],
                         ids=["tolerance", "tolerance-reach", "radii"])
def test_sequential_bound_keeps_its_level(method, p, rule):
    bound = make_bound(method, MC_N_MAX, MC_ALPHA, batch=MC_BATCH)
    rate, _ = _violation_rate(bound, p, seed=int(p * 1000), **rule)
    assert rate <= MC_ALPHA + SLACK


class FullAlphaEveryStage:
    """The invalid rule: Clopper-Pearson at the full alpha at every stage (no union bound)."""

    def __init__(self, sizes, alpha):
        self.sizes, self.alpha, self.n_max = sizes, alpha, sizes[-1]

    def looks(self):
        return self.sizes

    def lower(self, successes, trials):
        return clopper_pearson_lower(successes, trials, self.alpha)


@pytest.mark.parametrize("p", [0.6, 0.9])
@pytest.mark.parametrize("rule", [{"tolerance": 0.05}, {"tolerance": 0.0, "radii": [0.5, 1.0, 2.0]}],
                         ids=["tolerance", "radii"])
def test_full_alpha_at_every_stage_is_caught(p, rule):
    sizes = geometric_schedule(MC_N_MAX, MC_ALPHA, first=MC_BATCH).sizes
    rate, _ = _violation_rate(FullAlphaEveryStage(sizes, MC_ALPHA), p, seed=7, **rule)
    assert rate > MC_ALPHA + 2 * SLACK, rate


def _cp_lower_many(k, n, alpha):
    return np.where(k > 0, beta.ppf(alpha, np.maximum(k, 1), n - k + 1), 0.0)


@pytest.mark.parametrize("p", [0.6, 0.9])
def test_pilot_draws_counted_in_the_bound_are_caught(p):
    """n chosen from n0 pilot draws (50 more when the pilot looks good, 5000 otherwise): one CP bound at
    alpha over the n fresh draws is valid; over pilot + fresh draws it is not (SOUND.md 3e)."""
    rng, n0, n_seq = np.random.default_rng(3), 500, 10_000
    pilot = rng.binomial(n0, p, size=n_seq)
    n = np.where(pilot >= binom.ppf(0.8, n0, p), 50, 5000)  # a fixed rule of the pilot counts
    fresh = rng.binomial(n, p)
    valid = np.mean(_cp_lower_many(fresh, n, MC_ALPHA) > p)
    invalid = np.mean(_cp_lower_many(pilot + fresh, n0 + n, MC_ALPHA) > p)
    slack = 3 * math.sqrt(MC_ALPHA * (1 - MC_ALPHA) / n_seq)
    assert valid <= MC_ALPHA + slack and invalid > MC_ALPHA + 2 * slack, (valid, invalid)


# ------------------------------------------------------------------ union versus anytime at equal alpha


def test_union_versus_anytime_at_equal_alpha():
    """At n_max = 1e5, alpha = 0.001, tolerance 0.01 sigma (optimistic reach). Prints mean draws and radii;
    asserts only what is structural: the union's last-stage bound beats the anytime bound at n_max (CP at
    ~alpha/2 vs ~alpha/(c sqrt(n))), and the anytime bound, looking every batch, abstains a hopeless input
    sooner than a factor-2 schedule can."""
    n_max, alpha = 100_000, 0.001
    schedule = make_bound("union", n_max, alpha)
    for k in (55_000, 90_000, 99_900, n_max):
        assert schedule.lower(k, n_max) > anytime_lower(k, n_max, alpha)
    draws = {}
    for p in (0.3, 0.9, 0.999):
        for method in ("union", "anytime"):
            rng = np.random.default_rng(11)
            runs = [sequential_certify(lambda m: int(rng.binomial(m, p)), n_max, alpha, method) for _ in range(3)]
            draws[p, method] = np.mean([r.draws for r in runs])
            print(f"p={p} {method}: mean draws {draws[p, method]:.0f}, mean radius/sigma "
                  f"{np.mean([r.radius(1.0) for r in runs]):.3f}")
    assert draws[0.3, "anytime"] < draws[0.3, "union"]
