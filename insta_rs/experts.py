"""Per-level experts: one base classifier per noise level, routed by the sigma each noisy draw was made at.

The ``experts`` setting of a sigma search maps each level to a checkpoint trained at that sigma (the routing form of Dual
Randomized Smoothing, Sun, Mao & Vechev 2025). ``LevelExperts`` is the base classifier f(x, sigma) the
finite-level rules (grid, cascade, best_level), the selector and a fixed sigma then smooth: a draw at level
sigma_k is classified by expert k alone, so at every level the smoothed classifier is exactly expert k's
Cohen classifier g_k, and each rule's certificate (SOUND.md 3a, 3d) holds as it does for one model.

A draw at a sigma with no expert is a ConfigError: the continuous Insta-RS search cannot use experts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np
import torch
from torch import nn

from .checkpoints import TrainedRun, load_run
from .errors import ConfigError, InstaRSError, check


def level_key(sigma) -> float:
    """A level as it is matched: the float32 value the noise is scaled by."""
    return float(np.float32(sigma))


class LevelExperts(nn.Module):
    """f(x, sigma): row i of ``x`` is classified by the expert of ``sigma[i]``.

    experts: level -> base classifier (every one with the same classes and input shape)."""

    takes_sigma = True
    """``Smooth`` passes the per-row sigma to models that set this."""

    def __init__(self, experts: Mapping[float, nn.Module]):
        super().__init__()
        check(len(experts) >= 1, "experts", dict(experts), "at least one level: checkpoint entry")
        self.levels = sorted(level_key(sigma) for sigma in experts)
        check(len(set(self.levels)) == len(self.levels), "experts", sorted(experts), "distinct levels")
        by_level = {level_key(sigma): model for sigma, model in experts.items()}
        self.experts = nn.ModuleList(by_level[level] for level in self.levels)

    def expert(self, sigma) -> nn.Module:
        """The expert of level ``sigma`` (ConfigError when there is none)."""
        key = level_key(sigma)
        if key not in self.levels:
            raise ConfigError(f"sigma={key:g} has no expert: the experts have levels "
                              f"{', '.join(f'{s:g}' for s in self.levels)}; certify at those levels only")
        return self.experts[self.levels.index(key)]

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        values = torch.unique(sigma).tolist()
        if len(values) == 1:
            return self.expert(values[0])(x)
        out = None
        for value in values:
            rows = (sigma == value).nonzero().view(-1)
            logits = self.expert(value)(x[rows])
            if out is None:
                out = logits.new_empty((x.shape[0], logits.shape[1]))
            out[rows] = logits
        return out


def load_experts(experts: Mapping, trained: TrainedRun) -> tuple[LevelExperts, dict[str, str]]:
    """Load one checkpoint per level and check that each fits ``trained``'s data source (classes and input
    shape; one-line DataError naming the level otherwise). Returns the experts and {level: SHA-256}, which a
    resumed run must share."""
    check(isinstance(experts, Mapping) and len(experts) >= 1, "experts", experts,
          "a mapping from each level to a checkpoint, e.g. {0.25: a/checkpoints/last.ckpt, 0.5: b/...}")
    models, digests = {}, {}
    for sigma, path in experts.items():
        check(isinstance(sigma, (int, float)) and not isinstance(sigma, bool) and 0 < sigma < float("inf"),
              "experts", sigma, "levels that are numbers > 0, e.g. {0.25: run/checkpoints/last.ckpt}")
        try:  # load_run refuses a checkpoint whose classes or channels do not fit trained's data source
            run = load_run(Path(str(path)), source=trained.source, source_spec=trained.source_spec)
        except InstaRSError as error:
            raise type(error)(f"experts[{float(sigma):g}]: {error}") from error
        models[float(sigma)] = run.model
        digests[f"{float(sigma):g}"] = run.sha256
    return LevelExperts(models), digests
