"""Training targets for the sigma selector, from a base run of Insta-RS Train (ALGORITHMS.md 3d and 4).

The selector's class k is the k-th smallest level of Sigma = {sigma_1 < ... < sigma_K}. Its targets come
from the base run's per-example sigma table (``train_sigma.pt``, written by ``train=insta_rs``):

- ``nearest``: each example's learned sigma_i rounded to the nearest level in log space,
  k_i = argmin_k |log sigma_i - log sigma_k| (a tie goes to the smaller level).
- ``best_radius``: each level's estimated radius on that training example with the base classifier f and
  its true label y: with m draws per level, phat_k = #{f(x + sigma_k e) = y} / m and
  Rhat_k = sigma_k * PhiInv(clamp(phat_k, eps, 1 - eps)) (eps = 1 / (2m) unless given), the objective of
  Insta-RS Train's sigma update (``insta_rs.certificates.estimates.estimated_radius``). Soft targets
  softmax_k(Rhat_k / temperature), or one-hot argmax_k Rhat_k (a tie goes to the smaller level). These
  track each example's best level, which rounding sigma_i does not (it can drift toward large levels and
  cost clean accuracy; SOUND.md 3d).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .certificates.estimates import estimated_radius
from .errors import CheckpointError, DataError
from .search.selector import check_levels
from .selector_settings import SelectorSettings
from .smoothing import Smooth

SIGMA_TABLE_FILE = "train_sigma.pt"


def read_sigma_table(run_dir: str | Path) -> dict:
    """``train_sigma.pt`` in a base run's directory: {"idx", "sigma", "label", ...}, checked for shape;
    CheckpointError (one line) when missing, unreadable or not a sigma table."""
    path = Path(run_dir) / SIGMA_TABLE_FILE
    if not path.is_file():
        raise CheckpointError(f"no {SIGMA_TABLE_FILE} in the base run's directory {path.parent}: train the base "
                              "with train=insta_rs (it writes the per-example sigma table)")
    try:
        table = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated, not a torch file, or holding objects
        raise CheckpointError(f"{path} cannot be read ({' '.join(str(error).split())[:160]}): retrain the base with "
                              "train=insta_rs") from error
    ok = isinstance(table, dict) and all(isinstance(table.get(k), torch.Tensor) for k in ("idx", "sigma", "label"))
    if ok:
        n = table["idx"].numel()
        ok = n >= 1 and table["sigma"].numel() == n and table["label"].numel() == n
    if not ok:
        raise CheckpointError(f"{path} is not a sigma table: expected a dict with equally long 'idx', 'sigma' and "
                              "'label' tensors; retrain the base with train=insta_rs")
    return table


def check_table_fits(table: dict, split, path: str | Path) -> None:
    """DataError (one line) unless the table's indices lie in ``split`` and, where the split lists its
    targets, its labels are the split's labels at those indices (the table belongs to this data set)."""
    indices = table["idx"].reshape(-1).to(torch.long)
    size = len(split)
    if int(indices.min()) < 0 or int(indices.max()) >= size:
        raise DataError(f"{path}: dataset index {int(indices.max())} is outside the base run's train split "
                        f"({size} items): the sigma table belongs to another data set")
    targets = getattr(split, "targets", None)
    if targets is not None:
        expected = torch.as_tensor(targets, dtype=torch.long)[indices]
        if not torch.equal(expected, table["label"].reshape(-1).to(torch.long)):
            raise DataError(f"{path}: its labels differ from the base run's train split at the same indices: "
                            "the sigma table belongs to another data set or split")


def nearest_level_labels(sigmas: torch.Tensor, levels) -> torch.Tensor:
    """k_i = argmin_k |log sigma_i - log level_k| for every sigma_i (levels sorted increasingly; a tie goes
    to the smaller level). Returns a LongTensor of level indices, same length as ``sigmas``."""
    levels = check_levels(levels)
    sigmas = torch.as_tensor(sigmas, dtype=torch.float64).reshape(-1)
    if not bool(torch.isfinite(sigmas).all() and (sigmas > 0).all()):
        raise DataError("train_sigma.pt holds a sigma that is not a finite number > 0: the sigma table is corrupt; "
                        "retrain the base with train=insta_rs")
    distance = (sigmas.log().unsqueeze(1) - torch.tensor(levels, dtype=torch.float64).log().unsqueeze(0)).abs()
    return distance.argmin(dim=1)  # argmin returns the first minimum: the smaller level on a tie


def radius_estimates(correct_counts: torch.Tensor, draws: int, levels, eps: float | None = None) -> torch.Tensor:
    """Rhat_k = sigma_k * PhiInv(clamp(n_k / m, eps, 1 - eps)) for counts n_k of the true label out of m draws,
    shape (N, K) -> (N, K) float64 (``estimated_radius``; eps defaults to 1 / (2m))."""
    levels = check_levels(levels)
    return torch.from_numpy(estimated_radius(levels, correct_counts.numpy(), draws, eps))


def radius_targets(radii: torch.Tensor, soft: bool = True, temperature: float = 0.1) -> torch.Tensor:
    """Selector targets from estimated radii (N, K): softmax_k(Rhat_k / temperature), or one-hot argmax_k
    (first maximum, i.e. the smaller level, on a tie). Float32 rows that sum to 1."""
    if soft:
        return torch.softmax(radii.to(torch.float64) / temperature, dim=1).to(torch.float32)
    return F.one_hot(radii.argmax(dim=1), radii.shape[1]).to(torch.float32)


@torch.no_grad()
def true_label_counts(base_model: nn.Module, num_classes: int, xs: torch.Tensor, ys: torch.Tensor, levels,
                      draws: int, generator: torch.Generator | None = None, batch_size: int = 1024,
                      device=None) -> torch.Tensor:
    """n_ik = #{f(x_i + sigma_k e) = y_i} over ``draws`` draws, for every example i and level k: (N, K) int64.
    Every (example, level) pair gets its own draws, from ``generator`` in the order (i, k)."""
    levels = check_levels(levels)
    smooth = Smooth(base_model, num_classes, batch_size=batch_size, device=device)
    rows = xs.repeat_interleave(len(levels), dim=0)
    sigma = torch.tensor(levels, dtype=torch.float32).repeat(xs.shape[0])
    counts = smooth.sample_counts(rows, sigma, draws, generator).cpu()
    labels = ys.to(torch.long).repeat_interleave(len(levels))
    return counts.gather(1, labels.view(-1, 1)).view(xs.shape[0], len(levels))


class TableExamples(Dataset):
    """Items (x, target, idx) for the train-split examples ``indices``; target is a level index or a (K,) row."""

    def __init__(self, split, indices: torch.Tensor, targets: torch.Tensor):
        self.split, self.indices, self.targets = split, indices.tolist(), targets

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        x, _, idx = self.split[self.indices[i]]
        return x, self.targets[i], idx


def selector_targets(settings: SelectorSettings, table: dict, split=None, base_model: nn.Module | None = None,
                     num_classes: int = 0, generator: torch.Generator | None = None, device=None,
                     batch_size: int = 1024) -> torch.Tensor:
    """Targets for the examples of a sigma table under ``settings.label_mode``: level indices (``nearest``)
    or an (N, K) float tensor (``best_radius``: soft or one-hot, from ``selector_radii``)."""
    if settings.label_mode == "nearest":
        return nearest_level_labels(table["sigma"], settings.levels)
    radii = selector_radii(settings, table, split, base_model, num_classes, generator, device, batch_size)
    return radius_targets(radii, settings.soft_labels, settings.temperature)


def selector_radii(settings: SelectorSettings, table: dict, split, base_model: nn.Module, num_classes: int,
                   generator: torch.Generator | None = None, device=None, batch_size: int = 1024) -> torch.Tensor:
    """Each level's estimated radius Rhat_k (N, K) for the examples of a sigma table: the base classifier on
    split[idx_i] with label_i, ``settings.draws`` draws per level from ``generator``."""
    indices, labels = table["idx"].reshape(-1), table["label"].reshape(-1)
    counts = []
    loader = DataLoader(TableExamples(split, indices, labels), batch_size=batch_size, shuffle=False)
    for x, y, _ in loader:
        counts.append(true_label_counts(base_model, num_classes, x, y, settings.levels, settings.draws, generator,
                                        batch_size=batch_size, device=device))
    return radius_estimates(torch.cat(counts), settings.draws, settings.levels, settings.eps)


def reached(radii: torch.Tensor) -> torch.Tensor:
    """Rows (N,) whose true label some level reaches: an estimated radius > 0, i.e. phat > 1/2 there."""
    return (radii > 0).any(dim=1)


def level_balance_weights(targets: torch.Tensor, num_levels: int) -> torch.Tensor:
    """Sampling weights that give every level (a target's argmax) the same total weight: 1 / (its count)."""
    hard = targets if targets.dim() == 1 else targets.argmax(dim=1)
    counts = torch.bincount(hard, minlength=num_levels).to(torch.float64)
    return (1.0 / counts)[hard]


def label_counts(targets: torch.Tensor, num_levels: int) -> list[int]:
    """How many examples each level is the (arg)max target of."""
    hard = targets if targets.dim() == 1 else targets.argmax(dim=1)
    return torch.bincount(hard, minlength=num_levels).tolist()
