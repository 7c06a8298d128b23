"""The per-example sigma table of Insta-RS Train (ALGORITHMS.md section 4), as plain functions.

``candidate_sigmas`` and ``choose_sigmas`` are the stage-2 update rule: for a training example i with
current sigma_i, evaluate s in {sigma_i e^-eta, sigma_i, sigma_i e^+eta} (clipped to the bounds) with
m noisy draws each, score Rhat_y(s) = s * PhiInv(clamp(phat_y(s), eps, 1 - eps)) with the true label y
as class A, move to the best, and if phat_y(sigma_i) < 1/2 shrink the result by e^-eta; clip.
``first_occurrence`` resolves the duplicate indices that a distributed sampler's padding creates, so
every rank applies the same update. ``table_statistics`` and ``plot_sigma_table`` describe a table.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)


def clamp_eps(m: int) -> float:
    """The clamp of phat in the update's PhiInv: 1/(2m), half a draw, so Rhat stays finite and a
    candidate that classified all m draws correctly still ranks by its sigma."""
    return 0.5 / m


def candidate_sigmas(sigma: torch.Tensor, eta: float, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """(B, 3): sigma * (e^-eta, 1, e^+eta), clipped to [sigma_min, sigma_max]."""
    factors = torch.tensor([np.exp(-eta), 1.0, np.exp(eta)], dtype=sigma.dtype, device=sigma.device)
    return (sigma.view(-1, 1) * factors).clamp(sigma_min, sigma_max)


def choose_sigmas(candidates: torch.Tensor, p_correct: torch.Tensor, eta: float, sigma_min: float,
                  sigma_max: float, m: int) -> torch.Tensor:
    """The updated sigma per row from the three candidates (B, 3) and their estimated probability of the
    true class (B, 3). Ties go to the current sigma (column 1), then to the smaller sigma."""
    eps = clamp_eps(m)
    normal = torch.distributions.Normal(0.0, 1.0)
    scores = candidates * normal.icdf(p_correct.clamp(eps, 1 - eps))
    # prefer the current sigma on ties, then the smaller one: order columns (1, 0, 2) before argmax
    order = torch.tensor([1, 0, 2], device=candidates.device)
    best = order[scores[:, order].argmax(dim=1)]
    new = candidates.gather(1, best.view(-1, 1)).view(-1)
    shrink = p_correct[:, 1] < 0.5
    new = torch.where(shrink, new * float(np.exp(-eta)), new)
    return new.clamp(sigma_min, sigma_max)


@torch.no_grad()
def estimate_p_correct(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, sigmas: torch.Tensor,
                       m: int) -> torch.Tensor:
    """phat_y for every (row, candidate): the fraction of m draws of f(x_b + s e) equal to y_b, for the
    (B, K) candidate sigmas, all B*K*m noisy images in one forward pass."""
    rows, k = sigmas.shape
    shape = x.shape[1:]
    repeated = x.unsqueeze(1).unsqueeze(1).expand(rows, k, m, *shape)
    scale = sigmas.view(rows, k, 1, *([1] * len(shape)))
    noisy = (repeated + scale * torch.randn_like(repeated)).reshape(rows * k * m, *shape)
    predictions = model(noisy).argmax(dim=1).view(rows, k, m)
    return (predictions == y.view(rows, 1, 1)).float().mean(dim=2)


def first_occurrence(indices: torch.Tensor) -> torch.Tensor:
    """A boolean mask keeping the first occurrence of each index (the lowest rank's, when the gathered
    batches are stacked rank after rank), so duplicated indices get one deterministic value."""
    if indices.numel() == 0:
        return torch.zeros(0, dtype=torch.bool, device=indices.device)
    positions = torch.arange(indices.numel(), device=indices.device)
    size = int(indices.max()) + 1
    first = torch.full((size,), indices.numel(), dtype=torch.long, device=indices.device)
    first = first.scatter_reduce(0, indices, positions, reduce="amin")
    return first[indices] == positions


def table_statistics(table: torch.Tensor, sigma_min: float, sigma_max: float) -> dict[str, float]:
    """Quantiles, mean and the fractions of sigmas at either bound (within 1e-6 relative)."""
    values = table.detach().double().cpu()
    stats = {f"q{int(q * 100):02d}": float(torch.quantile(values, q)) for q in QUANTILES}
    stats["mean"] = float(values.mean())
    stats["at_min"] = float((values <= sigma_min * (1 + 1e-6)).double().mean())
    stats["at_max"] = float((values >= sigma_max * (1 - 1e-6)).double().mean())
    return stats


def plot_sigma_table(sigmas, difficulty, path: str | Path, title: str) -> None:
    """sigma_hist_train.png: the table's histogram, and each example's sigma against its difficulty
    signal (the stage-1 model's accuracy under noise at sigma0 on that example; NaN where unknown)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sigmas = np.asarray(sigmas, dtype=float)
    difficulty = np.asarray(difficulty, dtype=float)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.hist(sigmas, bins=40, color="tab:blue")
    left.set_xlabel("sigma (pixel units)")
    left.set_ylabel("training examples")
    left.set_title("per-example sigma")
    known = np.isfinite(difficulty)
    jitter = np.random.default_rng(0).uniform(-0.015, 0.015, known.sum())
    right.scatter(difficulty[known] + jitter, sigmas[known], s=4, alpha=0.4)
    right.set_xlabel("stage-1 model's accuracy under noise at sigma0")
    right.set_ylabel("sigma")
    right.set_title("sigma vs difficulty")
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(path.stem + ".tmp" + path.suffix)
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)
