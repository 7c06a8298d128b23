"""The best level per input: the ceiling of every sound finite-set rule (guarantee ``instance``).

At each input, every level sigma_k runs Cohen's CERTIFY (n0 selection draws, n estimation draws, level
alpha) with the *same* noise draws e (a copy of the row's generator per level: sigma_k * e), and the row
answers with the level of largest radius. This is the finite-grid form of the Insta-RS search (ALGORITHMS.md
2, 3a): its radius is the chosen level's Cohen radius, a certificate of that level's smoothed classifier at
this input, not of the instance-wise classifier (picking the largest of K radii after seeing them is not
covered by alpha; SOUND.md 3a's grid rule is the sound version). Because each level's draws equal those
of a fixed-sigma run at that level with the same seed, with one expert per level (``experts``) the row is
exactly the experts' fixed-sigma row of largest radius. It ranks levels by radius, not by correctness (the
label is unknown at test time), so it is not an oracle: at small radii it can fall below the fixed-sigma
envelope, when a large-sigma level certifies a wrong class with a larger radius than a small-sigma level that
was right.

Row columns: ``sigma`` the answering level (the largest level when every level abstains), ``pA_lower`` its
lower bound, extra ``level`` (index in the descending level list, -1 when every level abstains).
``search_draws`` = (K - 1)(n0 + n), the draws beyond one fixed-sigma CERTIFY (sequential: the draws the
other levels used).

PREDICT (``choose_sigma``): the level of largest radius that Cohen's CERTIFY would give on n0 draws per level
(the smallest level when none would answer); Cohen's PREDICT then runs there with fresh draws. Guarantee
``instance``, as for the certificates.
"""

from __future__ import annotations

import numpy as np
import torch

from ..certificates import ABSTAIN
from ..certificates.estimates import estimated_certified_radius
from ..smoothing import Smooth, charge_draws, noise_sigma
from .base import RowResult, SigmaChoice, SigmaMethod
from .finite_set import check_levels


def copies(generator: torch.Generator, count: int) -> list[torch.Generator]:
    """``count`` generators in ``generator``'s current state (each serves the same stream)."""
    state = generator.get_state()
    out = []
    for _ in range(count):
        copy = torch.Generator(device=generator.device)
        copy.set_state(state)
        out.append(copy)
    return out


class BestLevelSearch(SigmaMethod):
    """Per input, the level of largest Cohen radius among ``levels`` (module docstring). Guarantee ``instance``.

    levels: the noise levels (any order; listed largest first in the ``level`` column); experts: optional
    {level: checkpoint}, one base classifier per level (``insta_rs.experts``)."""

    name = "best_level"
    guarantee = "instance"
    extra_columns = ("level",)
    batches_rows = True

    def __init__(self, levels=(1.0, 0.5, 0.25, 0.12), experts=None):
        self.levels = check_levels(levels)
        self.experts = experts

    def certify(self, smooth: Smooth, x: torch.Tensor, n0: int, n: int, alpha: float,
                generator: torch.Generator) -> RowResult:
        return self.certify_many(smooth, [x], n0, n, alpha, [generator])[0]

    def choose_sigma(self, smooth: Smooth, x: torch.Tensor, n0: int, alpha: float,
                     generator: torch.Generator) -> SigmaChoice:
        """The level of largest CERTIFY radius on n0 draws per level (module docstring), guarantee ``instance``."""
        rows = x.unsqueeze(0).expand(len(self.levels), *x.shape)
        top = smooth.sample_counts(rows, torch.tensor(self.levels, dtype=torch.float32), n0, generator).max(dim=1).values
        radii = estimated_certified_radius([noise_sigma(s) for s in self.levels], top.cpu().numpy(), n0, alpha)
        best = int(np.argmax(radii)) if np.isfinite(radii).any() else len(self.levels) - 1  # largest first
        return SigmaChoice(self.levels[best], self.guarantee, len(self.levels) * n0)

    def certify_many(self, smooth: Smooth, xs: list[torch.Tensor], n0: int, n: int, alpha: float,
                     generators: list[torch.Generator]) -> list[RowResult]:
        levels = len(self.levels)
        level_generators = [copies(generator, levels) for generator in generators]
        rows = [x for x in xs for _ in range(levels)]
        certs = smooth.certify_batch(rows, self.levels * len(xs), n0, n, alpha,
                                     [g for per_row in level_generators for g in per_row])
        results = []
        for i, generator in enumerate(generators):
            mine = certs[i * levels:(i + 1) * levels]
            best = max(range(levels), key=lambda k: (mine[k].predict != ABSTAIN, mine[k].radius, -k))
            used = [n0 + c.n for c in mine]
            charge_draws(generator, level_generators[i])
            cert, answered = mine[best], mine[best].predict != ABSTAIN
            results.append(RowResult(cert.predict, cert.radius if answered else 0.0, self.levels[best],
                                     cert.p_lower, self.guarantee, search_draws=sum(used) - used[best],
                                     extra={"level": best if answered else -1}))
        return results
