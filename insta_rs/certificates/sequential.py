"""Sequential certification: fewer draws for the same certificate (SOUND.md 3e).

The candidate class c_A is fixed beforehand from separate n0 draws; here we only bound
p_A = P[f(x + sigma e) = c_A] from below while the draws arrive, and decide when to stop.
Two ways to pay for looking at the counts more than once, both fixed before any input is seen:

- ``Schedule`` (union bound): cumulative stage sizes n_1 < ... < n_S = n_max with shares
  alpha_s, sum alpha_s <= alpha. After stage s the bound is Clopper-Pearson at alpha_s. By the
  union bound P(some stage's bound fails) <= sum alpha_s <= alpha, whatever rule stops.
- ``AnytimeBound`` (confidence sequence): the beta-binomial mixture martingale (Robbins 1970),
  whose bound holds for every n simultaneously at the full alpha, so it may be looked at after
  every batch.

Either way every bound the procedure might report holds simultaneously with probability
>= 1 - alpha, so the running maximum of the bounds seen so far is a valid bound too, and any
stopping rule (``should_stop``) is sound; abstaining makes no claim and needs no alpha. The rules
differ only in cost. ``sequential_certify`` drives a ``draw(m) -> successes`` callable (no torch).

Soundness does NOT survive: Clopper-Pearson at the full alpha at every stage (the max over
stages overshoots alpha), or counting pilot draws that chose n in the final bound (SOUND.md 3e);
tests/test_sequential.py shows both failing by Monte Carlo.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

from scipy.optimize import brentq
from scipy.special import betaln, expit

from ..errors import check
from .bounds import clopper_pearson_lower, clopper_pearson_upper, cohen_radius

JEFFREYS = (0.5, 0.5)
"""Default mixture prior Beta(1/2, 1/2). With it the mixture's cost over the best fixed p is
~ 0.5 log(pi n / 2) nats whatever p_hat is (its density times sqrt(2 pi p(1-p)) is constant), so
no p_A is favoured, and it keeps mass near 1 where confident inputs live: at k = n the bound is
(alpha B(n + 1/2, 1/2) / B(1/2, 1/2))^(1/n) ~ (alpha / sqrt(pi n))^(1/n), versus alpha^(1/n) for
Clopper-Pearson at one fixed n."""

DECISIONS = ("continue", "abstain", "certified")
REASONS = ("early_abstain", "tolerance", "radii", "n_max")


def _check_alpha(alpha) -> None:
    check(isinstance(alpha, (int, float)) and 0.0 < alpha < 1.0, "alpha", alpha, "a number in (0, 1), e.g. 0.001")


def _check_positive_int(value, name: str) -> None:
    is_int = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    check(is_int and value >= 1, name, value, "an integer >= 1")


# --------------------------------------------------------------------------------------------
# Union bound over a fixed schedule of stages
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Schedule:
    """Stages fixed before any input: cumulative sizes n_1 < ... < n_S = n_max and alpha shares.

    The bound after stage s is Clopper-Pearson at alpha_s (``union_lower``); all S bounds hold
    together with probability >= 1 - sum alpha_s (union bound, SOUND.md 3e).
    """

    sizes: tuple[int, ...]
    alphas: tuple[float, ...]

    def __post_init__(self):
        sizes, alphas = tuple(self.sizes), tuple(float(a) for a in self.alphas)
        check(len(sizes) >= 1 and all(isinstance(s, numbers.Integral) and s >= 1 for s in sizes), "sizes", sizes,
              "a non-empty tuple of integers >= 1")
        sizes = tuple(int(s) for s in sizes)
        check(all(a < b for a, b in zip(sizes, sizes[1:])), "sizes", sizes, "strictly increasing stage sizes")
        check(len(alphas) == len(sizes) and all(a > 0 for a in alphas), "alphas", alphas,
              f"{len(sizes)} positive floats, one per stage")
        check(math.fsum(alphas) < 1.0, "alphas", alphas, "shares summing to a total alpha < 1")
        object.__setattr__(self, "sizes", sizes)
        object.__setattr__(self, "alphas", alphas)

    @property
    def n_max(self) -> int:
        return self.sizes[-1]

    @property
    def alpha(self) -> float:
        """The total error probability the schedule spends: sum of the shares."""
        return math.fsum(self.alphas)

    def looks(self) -> tuple[int, ...]:
        """The draw counts at which the bound may be read: the stage ends."""
        return self.sizes

    def lower(self, successes: int, trials: int) -> float:
        """The bound at a stage end; ``trials`` must be one of the planned stage sizes."""
        check(trials in self.sizes, "trials", trials, f"a stage size of the schedule {self.sizes}")
        return union_lower(self, self.sizes.index(trials), successes, trials)


def geometric_schedule(n_max: int, alpha: float, first: int = 1000, factor: float = 2.0,
                       weights: str = "geometric") -> Schedule:
    """Stage sizes ceil(first * factor^j) below n_max, then n_max; ``alpha`` split among them.

    weights="equal": alpha_s = alpha / S. weights="geometric": alpha_s proportional to n_s, so the
    shares grow by ~``factor`` per stage and the last stage, where inputs run to under a strict
    tolerance, keeps the largest share (~ (1 - 1/factor) alpha). Shares are scaled by (1 - 1e-12)
    so their floating-point sum never exceeds alpha.
    """
    _check_positive_int(n_max, "n_max")
    _check_alpha(alpha)
    _check_positive_int(first, "first")
    check(isinstance(factor, (int, float)) and factor > 1, "factor", factor, "a number > 1")
    check(weights in ("equal", "geometric"), "weights", weights, "'equal' or 'geometric'")
    sizes, size = set(), float(first)
    while math.ceil(size) < n_max:
        sizes.add(math.ceil(size))
        size *= factor
    sizes = tuple(sorted(sizes)) + (n_max,)
    raw = [1.0] * len(sizes) if weights == "equal" else [float(s) for s in sizes]
    total = math.fsum(raw)
    return Schedule(sizes, tuple(alpha * w / total * (1 - 1e-12) for w in raw))


def union_lower(schedule: Schedule, stage_index: int, successes: int, trials: int) -> float:
    """Clopper-Pearson lower bound at the stage's share alpha_s (SOUND.md 3e, union bound).

    ``trials`` must equal the stage's planned cumulative size n_s: a bound read at an unplanned n
    is not paid for.
    """
    check(0 <= stage_index < len(schedule.sizes), "stage_index", stage_index, f"0..{len(schedule.sizes) - 1}")
    check(trials == schedule.sizes[stage_index], "trials", trials, f"the stage size {schedule.sizes[stage_index]}")
    return _cp_lower(int(successes), int(trials), schedule.alphas[stage_index])


@lru_cache(maxsize=1 << 16)
def _cp_lower(successes: int, trials: int, alpha: float) -> float:
    return clopper_pearson_lower(successes, trials, alpha)


# --------------------------------------------------------------------------------------------
# Anytime-valid bound: the beta-binomial mixture martingale
# --------------------------------------------------------------------------------------------


def log_mixture_martingale(successes: int, trials: int, p0: float, prior=JEFFREYS) -> float:
    """log M_n(p0) = log B(a + k, b + n - k) - log B(a, b) - k log p0 - (n - k) log(1 - p0).

    M_n(p0) = integral of q^k (1-q)^(n-k) dBeta(a,b)(q) / (p0^k (1-p0)^(n-k)): the likelihood ratio
    of the Beta(a, b) mixture against p = p0. Under p = p0 it is a nonnegative martingale with mean
    1, so by Ville's inequality P(exists n: M_n(p0) >= 1/alpha) <= alpha.
    """
    a, b = prior
    k, n = successes, trials
    log_p0 = math.log(p0) if k else 0.0
    log_q0 = math.log1p(-p0) if n - k else 0.0
    return float(betaln(a + k, b + n - k) - betaln(a, b) - k * log_p0 - (n - k) * log_q0)


@lru_cache(maxsize=1 << 16)
def anytime_lower(successes: int, trials: int, alpha: float, prior: tuple[float, float] = JEFFREYS) -> float:
    """Lower end L_n of the confidence sequence C_n = {p0 : M_n(p0) < 1/alpha} (SOUND.md 3e).

    Validity: with probability >= 1 - alpha, M_n(p) < 1/alpha for every n at the true p (Ville),
    so p is in every C_n and p >= L_n for all n at once; hence max over past looks of L_n is a
    valid one-sided (1 - alpha) bound at any data-dependent stopping time. log M_n is convex in p0
    with its minimum at k/n, where M_n <= 1 < 1/alpha (a mixture never beats the best fixed p0),
    so C_n is an interval containing k/n and L_n is the unique root of log M_n = log(1/alpha)
    below k/n (0 when k = 0). Found by brentq in u = logit(p0), closed form when k = n, then
    nudged down until ``log_mixture_martingale`` at L_n is >= log(1/alpha), so rounding never
    makes it larger.

    Why the two-sided mixture: a prior truncated to (p0, 1] gives a one-sided martingale that is
    up to a factor 1/Beta(a,b)((p0,1]) larger (tighter bound), but its rejection set need not be
    an interval (the conditioning moves with p0), so its infimum would need a global search. The
    two-sided C_n at alpha already gives a one-sided bound at alpha (it covers p from both sides).
    Relation to Clopper-Pearson at one fixed n (measured, tests/test_sequential.py): L_n is looser,
    like CP at alpha / (c sqrt(n)) with c from sqrt(pi) (k = n) to ~18 (mid k, n = 1e6); c grows
    slowly, ~ pi sqrt(2 log(sqrt(n) / alpha)), the Gaussian-tail factor CP has and the mixture lacks.
    """
    _check_alpha(alpha)
    k, n = int(successes), int(trials)
    if not (n >= 1 and 0 <= k <= n):
        raise ValueError(f"binomial counts out of range: successes={k}, trials={n}")
    if k == 0:
        return 0.0
    a, b = prior
    const, target = float(betaln(a + k, b + n - k) - betaln(a, b)), math.log(1.0 / alpha)
    if k == n:  # log M_n = const - n log p0: closed form
        return _round_down(k, n, math.exp((const - target) / n), prior, target)

    def excess(u: float) -> float:  # log M_n(expit(u)) - log(1/alpha); -log p0 = softplus(-u)
        return const + k * _softplus(-u) + (n - k) * _softplus(u) - target

    u_hi = math.log(k / (n - k))
    u_lo = min(-1.0, -(target - const) / k - 1.0)  # there k * (-u) alone exceeds target - const
    u = brentq(excess, u_lo, u_hi, xtol=1e-13, rtol=1e-15)
    return _round_down(k, n, float(expit(u)), prior, target)


def _round_down(k: int, n: int, p0: float, prior, target: float) -> float:
    """The largest float at or a few steps below p0 where log M_n(p0) >= target (a rejected p0)."""
    step = math.ulp(p0)
    while log_mixture_martingale(k, n, p0, prior) < target:
        p0, step = max(p0 - step, 0.0), 2 * step
    return p0


def _softplus(x: float) -> float:
    return x + math.log1p(math.exp(-x)) if x > 0 else math.log1p(math.exp(x))


@dataclass(frozen=True)
class AnytimeBound:
    """The mixture confidence sequence at level alpha, read after every ``batch`` draws up to n_max."""

    alpha: float
    n_max: int
    batch: int = 1000
    prior: tuple[float, float] = JEFFREYS

    def __post_init__(self):
        _check_alpha(self.alpha)
        _check_positive_int(self.n_max, "n_max")
        _check_positive_int(self.batch, "batch")
        a, b = self.prior
        check(a > 0 and b > 0, "prior", self.prior, "two positive Beta parameters (a, b)")
        object.__setattr__(self, "prior", (float(a), float(b)))

    def looks(self) -> tuple[int, ...]:
        """batch, 2 batch, ..., and n_max (looks are free for a confidence sequence)."""
        return tuple(range(self.batch, self.n_max, self.batch)) + (self.n_max,)

    def lower(self, successes: int, trials: int) -> float:
        return anytime_lower(int(successes), int(trials), self.alpha, self.prior)


# --------------------------------------------------------------------------------------------
# Stopping rules
# --------------------------------------------------------------------------------------------


def reachable_lower(successes: int, trials: int, bound, reach_alpha: float | None = None) -> float:
    """The lower bound at n_max if the remaining n_max - n draws went well (SOUND.md 3e, stopping).

    reach_alpha=None (optimistic, the default): all remaining draws succeed, i.e. the bound of
    k + (n_max - n) successes out of n_max -- an upper limit on any bound the run can still reach
    at n_max (for the union bound, the last stage's alpha_S; for the anytime bound, the full alpha).
    reach_alpha=beta (a heuristic): the remaining draws succeed at rate p_hi, the Clopper-Pearson
    upper bound of k/n at beta (rounded up). Both are sound; they differ only in cost.
    """
    k, n, n_max = int(successes), int(trials), bound.n_max
    rest = n_max - n
    if reach_alpha is None:
        return bound.lower(k + rest, n_max)
    _check_alpha(reach_alpha)
    return bound.lower(k + min(rest, math.ceil(clopper_pearson_upper(k, n, reach_alpha) * rest)), n_max)


_radius = lru_cache(maxsize=1 << 16)(cohen_radius)  # bounds repeat across looks and inputs: cache PhiInv


def _next_radius_in_reach(radius_now: float, radius_best: float, radii) -> bool:
    """True when the smallest listed radius above the current one can still be certified."""
    above = [r for r in radii if r > radius_now]
    return bool(above) and radius_best >= min(above)


def decide(successes: int, trials: int, bound, sigma: float, tolerance: float, radii=None,
           best_lower: float = 0.0, reach_alpha: float | None = None) -> tuple[str, str, float]:
    """(decision, reason, p_lower) after a look; see ``should_stop``. reason is "" for "continue"."""
    check(sigma > 0, "sigma", sigma, "a number > 0")
    check(tolerance >= 0, "tolerance", tolerance, "a number >= 0 (in radius units)")
    lower = max(bound.lower(successes, trials), best_lower)
    verdict = "certified" if lower > 0.5 else "abstain"
    if trials >= bound.n_max:
        return verdict, "n_max", lower
    reach = max(reachable_lower(successes, trials, bound, reach_alpha), lower)
    if reach <= 0.5:
        return "abstain", "early_abstain", lower
    radius_now, radius_best = _radius(sigma, lower), _radius(sigma, reach)
    if radii is None and radius_best - radius_now <= tolerance:
        return verdict, "tolerance", lower
    if radii is not None and lower > 0.5 and not _next_radius_in_reach(radius_now, radius_best, radii):
        return verdict, "radii", lower
    # radii list, not yet certified: r = 0 ("certified at all") is the first target, in reach since reach > 1/2
    return "continue", "", lower


def should_stop(successes: int, trials: int, bound, sigma: float, tolerance: float, radii=None,
                best_lower: float = 0.0, reach_alpha: float | None = None) -> str:
    """"continue", "abstain" or "certified" after a look at k successes in n draws (SOUND.md 3e).

    ``bound`` is a ``Schedule`` (n must be a stage end) or an ``AnytimeBound``; the current bound is
    max(bound at (k, n), best_lower), best_lower being the best bound of earlier looks. Rules:
    (a) early abstain: the reachable bound at n_max (``reachable_lower``) is <= 1/2;
    (b) tolerance (radii is None): R(reachable) - R(current) <= tolerance, R = ``cohen_radius``
        (sigma PhiInv(p), 0 at p <= 1/2);
    (c) radii list: the input is certified (current bound > 1/2) and the smallest listed radius above
        R(current) is above R(reachable). "Certified at all" (r = 0) is the first target: an input not yet
        certified whose reachable bound is above 1/2 continues, as it would under fixed n;
    and n = n_max always stops. On stopping: "certified" when the current bound is > 1/2.
    """
    return decide(successes, trials, bound, sigma, tolerance, radii, best_lower, reach_alpha)[0]


# --------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SequentialResult:
    """What a sequential run reports.

    p_lower: the running maximum of the bounds read (valid at the run's alpha, SOUND.md 3e).
    draws / successes: draws used and successes among them; looks: how many bounds were read.
    decision: "certified" or "abstain"; reason: which rule stopped ("early_abstain", "tolerance",
    "radii", "n_max").
    """

    p_lower: float
    draws: int
    successes: int
    decision: str
    reason: str
    looks: int

    def radius(self, sigma: float) -> float:
        """Cohen's radius sigma PhiInv(p_lower) when certified, else 0."""
        return cohen_radius(sigma, self.p_lower) if self.decision == "certified" else 0.0


def make_bound(method: str, n_max: int, alpha: float, batch: int = 1000, factor: float = 2.0,
               weights: str = "geometric", prior=JEFFREYS):
    """"anytime": ``AnytimeBound`` read every ``batch`` draws; "union": ``geometric_schedule`` with
    first stage ``batch`` and growth ``factor``."""
    check(method in ("anytime", "union"), "method", method, "'anytime' or 'union'")
    if method == "anytime":
        return AnytimeBound(alpha, n_max, batch, tuple(prior))
    return geometric_schedule(n_max, alpha, first=batch, factor=factor, weights=weights)


def run_sequential(draw: Callable[[int], int], bound, sigma: float = 1.0, tolerance: float = 0.01,
                   radii=None, reach_alpha: float | None = None) -> SequentialResult:
    """Draw up to each of ``bound.looks()`` in turn and stop as ``should_stop`` says.

    draw(m) returns the number of successes (predictions of the fixed candidate class) among m
    fresh draws; the counts accumulate, so stage sizes are cumulative.
    """
    successes = trials = looks = 0
    best = 0.0
    for look in bound.looks():
        got = int(draw(look - trials))
        if not 0 <= got <= look - trials:
            raise ValueError(f"draw({look - trials}) returned {got} successes")
        successes, trials, looks = successes + got, look, looks + 1
        decision, reason, best = decide(successes, trials, bound, sigma, tolerance, radii, best, reach_alpha)
        if decision != "continue":
            return SequentialResult(best, trials, successes, decision, reason, looks)
    raise AssertionError("the last look is n_max, where every run stops")


def sequential_certify(draw: Callable[[int], int], n_max: int, alpha: float, method: str = "union",
                       sigma: float = 1.0, tolerance: float = 0.01, radii=None, batch: int = 1000,
                       factor: float = 2.0, weights: str = "geometric", prior=JEFFREYS,
                       reach_alpha: float | None = None) -> SequentialResult:
    """Certify p_A > 1/2 at level alpha with at most n_max draws, stopping early (SOUND.md 3e).

    method="union": looks only at the stage ends of ``geometric_schedule(n_max, alpha, batch,
    factor, weights)``; method="anytime": looks after every ``batch`` draws at the full alpha.
    tolerance and the radius are in the units of sigma * PhiInv. The candidate class is fixed
    before (separate n0 draws); ``draw`` counts only it.

    Why the defaults (union, geometric shares): at equal alpha the last stage's Clopper-Pearson at
    ~alpha/2 gives radii within a few thousandths of sigma of Cohen's fixed-n bound, while the
    anytime bound at n_max is CP at ~alpha/(c sqrt(n_max)) and costs more radius (most at p_A near
    1); the anytime bound stops sooner (it looks every batch), so prefer it when draws matter
    more than the last bit of radius. tests/test_sequential.py prints a comparison.
    """
    bound = make_bound(method, n_max, alpha, batch, factor, weights, prior)
    return run_sequential(draw, bound, sigma, tolerance, radii, reach_alpha)



@dataclass(frozen=True)
class SequentialPlan:
    """``certify.sampling=sequential``: how a certificate spends its draws (SOUND.md 3e).

    bound: "union" (Clopper-Pearson at stage shares of a geometric schedule: first stage ``first`` draws,
    each next one ``factor`` times larger, up to n_max) or "anytime" (the beta-binomial mixture confidence
    sequence, read every ``first`` draws). tolerance: stop when the radius still reachable at n_max exceeds
    the current one by at most this (pixel units). radii: certify at these radii only: stop when the next
    one above the current radius is out of reach (r = 0, certified at all, is always the first target). reach_alpha: how optimistic "reachable" is (None: every
    remaining draw a success; beta: the remaining draws succeed at the Clopper-Pearson upper bound at beta).
    The stopping rule changes only the cost, never the validity: every bound it may report is paid for
    before the input is seen."""

    bound_kind: str = "union"
    first: int = 1000
    factor: float = 2.0
    tolerance: float = 0.01
    radii: tuple[float, ...] | None = None
    reach_alpha: float | None = 0.001

    def bound(self, n_max: int, alpha: float):
        """The schedule (union) or confidence sequence (anytime) of one certificate: n_max draws, level alpha."""
        return make_bound(self.bound_kind, n_max, alpha, batch=min(self.first, n_max), factor=self.factor)

    def decide(self, successes: int, trials: int, bound, sigma: float, best_lower: float) -> tuple[str, str, float]:
        """``decide`` with this plan's tolerance, radii and reach."""
        return decide(successes, trials, bound, sigma, self.tolerance, self.radii, best_lower, self.reach_alpha)
