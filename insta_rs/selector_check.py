"""The distillation check: how well a trained smoothed selector reproduces the per-input best level.

The selector's ceiling is the ``instance`` search restricted to its levels (ALGORITHMS.md 2, SOUND.md 3d):
at each input, the level with the largest estimated radius
Rhat_k = sigma_k * PhiInv(CP lower bound of n_A / m) (``estimated_certified_radius``; A the top class of
the m draws at level k, -inf where the bound is < 1/2). A diagnostic, not a certificate: it reads no
labels and certifies nothing.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .certificates.estimates import estimated_certified_radius
from .checkpoints import load_run, load_selector
from .search.selector import check_levels
from .smoothing import Smooth


def instance_radius_estimates(base_model: nn.Module, num_classes: int, xs: torch.Tensor, levels, draws: int = 256,
                              alpha: float = 0.05, generator: torch.Generator | None = None, batch_size: int = 1000,
                              device=None) -> np.ndarray:
    """The objective of the ``instance`` search at every level, without labels: an (N, K) float64 array of
    ``estimated_certified_radius`` over ``draws`` draws per (input, level), at the float32 sigma used."""
    levels = check_levels(levels)
    smooth = Smooth(base_model, num_classes, batch_size=batch_size, device=device)
    rows = xs.repeat_interleave(len(levels), dim=0)
    sigma = torch.tensor(levels, dtype=torch.float32).repeat(xs.shape[0])
    top = smooth.sample_counts(rows, sigma, draws, generator).max(dim=1).values.cpu().numpy()
    radii = estimated_certified_radius(sigma.numpy().astype(np.float64), top, draws, alpha)
    return radii.reshape(xs.shape[0], len(levels))


def distillation_check(selector_model: nn.Module, selector_sigma: float, levels, base_model: nn.Module,
                       num_classes: int, xs: torch.Tensor, *, selector_draws: int = 256, search_draws: int = 256,
                       search_alpha: float = 0.05, seed: int = 0, batch_size: int = 1000, device=None) -> dict:
    """How well the smoothed selector reproduces the per-input best level (its ceiling; SOUND.md 3d).

    For each input: the selector's level = argmax of h_sel's counts over ``selector_draws`` draws at
    sigma_sel (a Monte Carlo estimate of g_sel, not certified); the best level = argmax_k of the ``instance``
    objective (``instance_radius_estimates``). The cost of an input is max(Rhat_best, 0) - max(Rhat_selected, 0)
    (0 when they agree). Returns {"inputs", "agreement" (fraction where the levels agree or their estimated
    radii are equal), "mean_cost" (over all inputs), "mismatch_mean_cost" (over disagreeing inputs; NaN if
    none), "no_level_certifies" (inputs where every Rhat is -inf), "per_level": a DataFrame with, per level,
    how often each rule picks it and the agreement among inputs whose best level it is}.
    """
    import pandas as pd

    levels = check_levels(levels)
    generator = torch.Generator(device=device or "cpu").manual_seed(int(seed))
    selector = Smooth(selector_model, len(levels), batch_size=batch_size, device=device)
    chosen = selector.sample_counts(xs, float(selector_sigma), selector_draws, generator).argmax(dim=1).cpu().numpy()
    radii = instance_radius_estimates(base_model, num_classes, xs, levels, search_draws, search_alpha, generator,
                                      batch_size, device)
    best = radii.argmax(axis=1)
    gain = np.maximum(radii, 0.0)
    rows = np.arange(len(best))
    cost = gain[rows, best] - gain[rows, chosen]
    agree = (best == chosen) | (cost == 0)  # equal estimated radii (e.g. no level certifies) count as agreement
    per_level = pd.DataFrame({
        "level": list(levels),
        "selector_picks": np.bincount(chosen, minlength=len(levels)),
        "best_picks": np.bincount(best, minlength=len(levels)),
        "agreement_when_best": [float(agree[best == k].mean()) if (best == k).any() else math.nan
                                for k in range(len(levels))],
    })
    return {
        "inputs": int(len(best)),
        "agreement": float(agree.mean()) if len(best) else math.nan,
        "mean_cost": float(cost.mean()) if len(best) else math.nan,
        "mismatch_mean_cost": float(cost[~agree].mean()) if (~agree).any() else math.nan,
        "no_level_certifies": int(np.isneginf(radii).all(axis=1).sum()),
        "per_level": per_level,
    }


def distillation_check_files(selector_path: str | Path, base_ckpt_path: str | Path, split: str = "test",
                             max_inputs: int = 100, **kwargs) -> dict:
    """``distillation_check`` on the first ``max_inputs`` inputs of a split of the base run's data set."""
    device = kwargs.get("device")
    selector_model, record = load_selector(selector_path, device)
    base = load_run(base_ckpt_path)
    dataset = base.source.split(split)
    count = min(len(dataset), int(max_inputs))
    xs = torch.stack([dataset[i][0] for i in range(count)])
    return distillation_check(selector_model, record["sigma"], record["levels"], base.model.to(device or "cpu"),
                              base.num_classes, xs, **kwargs)
