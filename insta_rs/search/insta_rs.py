"""Insta-RS test-time sigma search (ALGORITHMS.md 2): guarantee ``instance``, not a worst-case certificate.

For each input x, a multiple-start local search in log-sigma picks sigma*, then CERTIFY (ALGORITHMS.md 1)
runs at sigma* with fresh draws. The radius is Cohen's radius of the fixed-sigma classifier g_{sigma*} at
x; it says nothing about the instance-wise classifier x -> g_{sigma*(x)}(x) (Sukenik et al. 2022), hence
the label ``instance``.

Objective at sigma, from m noise draws: cA = the most frequent class, nA its count,
    Rhat(sigma) = sigma * PhiInv(CP lower bound of nA/m at level alpha_s), or -inf when that bound < 1/2.

Search (all in u = log sigma, clipped to [log sigma_min, log sigma_max]; starts outside the bounds are
clipped into them). Each start keeps a current point u and a step eta (initially ``eta``). At every step,
every active start proposes u - eta, u, u + eta; all proposals that were never evaluated go through ONE
``smooth.sample_counts`` call (one row per sigma, per-row sigma), so a step is one batched forward
sweep. A start moves to its best proposal if that beats its current value (ties keep the smaller
sigma), otherwise halves eta; it stops when eta < eta_min. The search ends after ``steps`` steps or
when no start is active.

Memoisation: a sigma is evaluated once per input and its Rhat reused (the current point of every start,
a point two starts both reach). Re-evaluating it would only spend draws: the objective is an estimate
either way, and none of these draws enters the certificate.

Merging (``merge``, default on): after each step, a start whose point lies within both its own and another
active start's step of that start's point, and whose value is not better (ties: the earlier start
wins), is retired: its next proposals would bracket the same neighbourhood. sigma* is still the best
point visited by any start. On a trained digits CNN this cut the mean search from about 10,650 to about
8,550 draws per input (10.6% -> 8.5% of n0 + n = 100,100) with the same radii on average.

sigma* = the visited point of largest Rhat (ties: the smaller sigma). Fallback when every visited Rhat
is -inf (no sigma gave a lower bound >= 1/2): the visited point of largest nA/m (ties: the smaller
sigma), i.e. the sigma where the base classifier was most consistent; CERTIFY usually abstains there.

Independence: the search and CERTIFY draw from the same generator, the search first. CERTIFY's draws are
the generator's later output, so they are fresh and independent of every search draw; the certificate
at sigma* holds with probability >= 1 - alpha whatever the search saw (sigma* is a function of earlier,
independent draws).

Cost at the defaults (4 starts, m = 256, 8 steps): 12 sigmas at the first step, then at most 2 new sigmas
per active start per step (1 after a move, 2 after halving), so at most 68 sigmas (17,408 draws, 17% of
n0 + n = 100,100); measured means are far lower (above). ``search_draws`` reports each row's total.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from ..certificates.estimates import estimated_certified_radius
from ..errors import check
from ..smoothing import Smooth
from .base import RowResult, SigmaChoice, SigmaMethod

_KEY_DECIMALS = 12


@dataclass(frozen=True)
class SearchOutcome:
    """What the search found at one input: sigma* and its objective, the noise draws spent, the number of
    evaluated sigmas, steps taken and ``sample_counts`` calls made, and the visited points
    (sigma -> (Rhat, nA)) in evaluation order."""

    sigma: float
    rhat: float
    draws: int
    evaluations: int
    steps: int
    calls: int
    visited: dict


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _integer(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class InstaRSSearch(SigmaMethod):
    """Multiple-start local search for sigma in log space, then CERTIFY at sigma* (ALGORITHMS.md 2).

    starts: initial sigmas; sigma_min/sigma_max: the search bounds; m: noise draws per evaluated sigma;
    steps: at most this many steps (T); eta: initial step in log-sigma; eta_min: a start stops once its
    step is below this; alpha_s: level of the search's Clopper-Pearson lower bound; merge: retire a start
    that has reached the neighbourhood of a better one (module docstring). Guarantee ``instance``.
    """

    name = "insta_rs"
    guarantee = "instance"
    extra_columns = ()

    def __init__(self, starts=(0.12, 0.25, 0.5, 1.0), sigma_min: float = 0.05, sigma_max: float = 2.0,
                 m: int = 256, steps: int = 8, eta: float = 0.25, eta_min: float = 0.02, alpha_s: float = 0.05,
                 merge: bool = True):
        starts = list(starts) if hasattr(starts, "__iter__") and not isinstance(starts, str) else starts
        check(isinstance(starts, list) and len(starts) >= 1 and all(_number(s) and s > 0 for s in starts),
              "starts", starts, "a non-empty list of numbers > 0, e.g. [0.12, 0.25, 0.5, 1.0]")
        check(_number(sigma_min) and sigma_min > 0, "sigma_min", sigma_min, "a number > 0")
        check(_number(sigma_max) and sigma_max >= sigma_min, "sigma_max", sigma_max,
              f"a number >= sigma_min={sigma_min}")
        check(_integer(m) and m >= 1, "m", m, "an integer >= 1 (noise draws per evaluated sigma)")
        check(_integer(steps) and steps >= 1, "steps", steps, "an integer >= 1")
        check(_number(eta) and eta > 0, "eta", eta, "a number > 0 (initial step in log-sigma)")
        check(_number(eta_min) and 0 < eta_min <= eta, "eta_min", eta_min,
              f"a number in (0, eta={eta}]")
        check(_number(alpha_s) and 0 < alpha_s < 1, "alpha_s", alpha_s, "a number in (0, 1), e.g. 0.05")
        self.starts = [float(s) for s in starts]
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)
        self.m, self.steps = int(m), int(steps)
        self.eta, self.eta_min, self.alpha_s = float(eta), float(eta_min), float(alpha_s)
        check(isinstance(merge, bool), "merge", merge, "true or false")
        self.merge = merge

    @property
    def T(self) -> int:  # noqa: N802 -- ALGORITHMS.md's name for ``steps`` (printed by ``insta_rs.bench``)
        return self.steps

    # -- the objective ---------------------------------------------------------------------------------

    def objective(self, sigmas: np.ndarray, top_counts: np.ndarray) -> np.ndarray:
        """Rhat = sigma * PhiInv(CP lower of nA/m at alpha_s), -inf where that lower bound is < 1/2. A search
        heuristic, not a certificate (the certificate is CERTIFY's, with fresh draws and the float32 sigma)."""
        return estimated_certified_radius(sigmas, top_counts, self.m, self.alpha_s)

    # -- the search ------------------------------------------------------------------------------------

    def search(self, smooth: Smooth, x: torch.Tensor, generator: torch.Generator | None) -> SearchOutcome:
        """Run the multiple-start search at one input x (C, H, W); its draws come from ``generator``."""
        low, high = math.log(self.sigma_min), math.log(self.sigma_max)

        def clip(u: float) -> float:
            return round(min(max(u, low), high), _KEY_DECIMALS)

        points = [clip(math.log(s)) for s in self.starts]
        steps_left = [self.eta] * len(points)
        active = [True] * len(points)
        visited: dict[float, tuple[float, int]] = {}  # u -> (Rhat, nA), in evaluation order
        draws = calls = steps = 0
        for _ in range(self.steps):
            proposals = {i: (clip(points[i] - steps_left[i]), points[i], clip(points[i] + steps_left[i]))
                         for i in range(len(points)) if active[i]}
            if not proposals:
                break
            steps += 1
            new = [u for i in proposals for u in proposals[i] if u not in visited]
            new = list(dict.fromkeys(new))
            if new:
                sigmas = np.exp(np.array(new))
                rows = x.unsqueeze(0).expand(len(new), *x.shape)
                counts = smooth.sample_counts(rows, torch.as_tensor(sigmas, dtype=torch.float32), self.m, generator)
                top = counts.max(dim=1).values.cpu().numpy()
                calls += 1
                draws += len(new) * self.m
                for u, value, n_a in zip(new, self.objective(sigmas, top), top.tolist()):
                    visited[u] = (float(value), int(n_a))
            for i, (down, here, up) in proposals.items():
                current = visited[here][0]
                # best proposal; among equal values the smaller sigma (order down, here, up)
                best = max((down, here, up), key=lambda u: (visited[u][0], -u))
                if visited[best][0] > current:
                    points[i] = best
                else:
                    steps_left[i] /= 2.0
                    if steps_left[i] < self.eta_min:
                        active[i] = False
            if self.merge:
                self._retire_duplicates(points, steps_left, active, visited)
        finite = [u for u, (value, _) in visited.items() if value > -math.inf]
        if finite:
            best = max(finite, key=lambda u: (visited[u][0], -u))
        else:
            best = max(visited, key=lambda u: (visited[u][1], -u))
        return SearchOutcome(sigma=float(math.exp(best)), rhat=visited[best][0], draws=draws,
                             evaluations=len(visited), steps=steps, calls=calls,
                             visited={float(math.exp(u)): v for u, v in visited.items()})

    @staticmethod
    def _retire_duplicates(points, steps_left, active, visited) -> None:
        """Retire a start whose point lies within both starts' steps of a better active start's point
        (ties: the earlier start wins): its next proposals would bracket the same neighbourhood."""
        order = sorted((i for i in range(len(points)) if active[i]), key=lambda i: (-visited[points[i]][0], i))
        for rank, i in enumerate(order):
            for j in order[:rank]:
                if active[j] and abs(points[i] - points[j]) <= min(steps_left[i], steps_left[j]):
                    active[i] = False
                    break

    # -- certification ---------------------------------------------------------------------------------

    def certify(self, smooth: Smooth, x: torch.Tensor, n0: int, n: int, alpha: float,
                generator: torch.Generator) -> RowResult:
        """Search sigma* (ALGORITHMS.md 2), then CERTIFY at sigma* with the generator's later, fresh draws."""
        start = time.perf_counter()
        outcome = self.search(smooth, x, generator)
        search_time = time.perf_counter() - start
        cert = smooth.certify(x, outcome.sigma, n0, n, alpha, generator)
        return RowResult(cert.predict, cert.radius, outcome.sigma, cert.p_lower, self.guarantee,
                         search_time=search_time, search_draws=outcome.draws)

    def choose_sigma(self, smooth: Smooth, x: torch.Tensor, n0: int, alpha: float,
                     generator: torch.Generator) -> SigmaChoice:
        """sigma* of the search, for PREDICT with the generator's later draws: guarantee ``instance``."""
        outcome = self.search(smooth, x, generator)
        return SigmaChoice(outcome.sigma, self.guarantee, outcome.draws)
