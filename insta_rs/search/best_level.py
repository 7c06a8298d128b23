"""The best level per input: the ceiling of every sound finite-set rule (guarantee ``instance``).

At each input, every level sigma_k runs Cohen's CERTIFY (n0 selection draws, n estimation draws, level
alpha) with the *same* noise draws e (a copy of the row's generator per level: sigma_k * e), and the row
answers with the level of largest radius. This is the finite-grid form of the Insta-RS search (ALGORITHMS.md
2, 3a): its radius is the chosen level's Cohen radius, a certificate of that level's smoothed classifier at
this input, not of the instance-wise classifier (picking the largest of K radii after seeing them is not
covered by alpha; SOUND.md 3a's grid rule is the sound version). Because each level's draws equal those
of a fixed-sigma run at that level with the same seed, with one expert per level (``experts``) the row is
exactly the best of the experts' fixed-sigma rows: the per-input best level, which is at or above the
fixed-sigma envelope at every radius.

Row columns: ``sigma`` the answering level (the largest level when every level abstains), ``pA_lower`` its
lower bound, extra ``level`` (index in the descending level list, -1 when every level abstains).
``search_draws`` = (K - 1)(n0 + n), the draws beyond one fixed-sigma CERTIFY (sequential: the draws the
other levels used).
"""

from __future__ import annotations

import torch

from ..certificates import ABSTAIN
from ..smoothing import Smooth, charge_draws
from .base import RowResult, SigmaMethod
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
