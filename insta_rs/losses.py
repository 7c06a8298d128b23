"""Training losses for smoothed classifiers (the ``train/loss`` config group).

A loss is a dataclass of its settings (every default lives there; the ``train/loss`` config files name
it by ``_target_``), checked when built, and called as ``loss(model, x, y, sigma)`` with x in [0, 1], y the
labels and sigma a per-row tensor of noise levels. It returns ``LossOutput(loss, logits, parts)`` where
logits are the model's outputs on (one set of) noisy inputs, used for the training accuracy, and ``parts``
the loss's named terms (logged as ``train/loss/<part>``). The sigma schedule (one sigma, or the per-example
table of Insta-RS Train) is chosen separately, so every loss works with every schedule.

- ``gaussian``: Gaussian data augmentation (Cohen et al. 2019);
- ``consistency``: consistency regularisation over m noisy copies (Jeong & Shin 2020);
- ``macer``: MACER's certified-radius hinge over k noisy copies (Zhai et al. 2020).

The multi-copy losses take an optional ``noise`` argument (standard-normal draws, one per copy) so a
caller or a test can fix the noise; by default they draw it from torch's global generator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from statistics import NormalDist

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError


@dataclass
class LossOutput:
    """loss: the scalar to minimise; logits: (B, classes) on one noisy copy of the batch (for the training
    accuracy); parts: named terms of the loss (scalars, e.g. ``ce``, ``consistency``), possibly empty."""

    loss: torch.Tensor
    logits: torch.Tensor
    parts: dict = field(default_factory=dict)


def add_noise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """x + sigma_i * e_i with e ~ N(0, I), one sigma per row, in the input's dtype (float32 for images)."""
    return x + torch.randn_like(x) * sigma.view(-1, *([1] * (x.dim() - 1)))


@dataclass
class GaussianAugmentation:
    """Cohen et al. (2019): cross-entropy of f(x + sigma * e), one noise draw per example."""

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, sigma: torch.Tensor) -> LossOutput:
        logits = model(add_noise(x, sigma))
        return LossOutput(F.cross_entropy(logits, y), logits)


def draw_noise(x: torch.Tensor, copies: int) -> torch.Tensor:
    """``copies`` independent standard-normal draws shaped like x: a tensor (copies, *x.shape), in x's dtype."""
    return torch.randn((copies, *x.shape), dtype=x.dtype, device=x.device)


def noisy_logits(model: nn.Module, x: torch.Tensor, sigma: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Logits of x + sigma_i * noise[j] for every copy j, in one forward pass over the (copies * B) rows (so
    batch-norm statistics see all copies, as in the reference implementations); returns (copies, B, classes)."""
    copies, rows = noise.shape[0], x.shape[0]
    if noise.shape[1:] != x.shape:
        raise ValueError(f"noise has shape {tuple(noise.shape)}, expected (copies, {', '.join(map(str, x.shape))})")
    scale = sigma.to(x.dtype).view(1, -1, *([1] * (x.dim() - 1)))
    noisy = (x.unsqueeze(0) + scale * noise).reshape(copies * rows, *x.shape[1:])
    return model(noisy).view(copies, rows, -1)


def _check_int(value, setting: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{setting}={value!r} is invalid: expected an integer >= {minimum}")
    return value


def _check_number(value, setting: str, accepted: str, ok) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not ok(value):
        raise ConfigError(f"{setting}={value!r} is invalid: expected {accepted}")
    return float(value)


def consistency_objective(logits: torch.Tensor, y: torch.Tensor, lbd: float, eta: float) -> dict[str, torch.Tensor]:
    """The consistency-regularised objective of Jeong & Shin (2020) from the logits of m noisy copies.

    logits: (m, B, C), copy j of row i being f(x_i + sigma_i e_ij); y: (B,) labels or (B, C) target
    probabilities (soft labels: the cross-entropy is then against them). With p_ij = softmax(logits[j, i]) and
    pbar_i = (1/m) sum_j p_ij:
        ce          = (1/(mB)) sum_{i,j} -log p_ij[y_i]
        consistency = (1/B) sum_i (1/m) sum_j KL(pbar_i || p_ij)     (from the average to each copy)
        entropy     = (1/B) sum_i H(pbar_i),  H(p) = -sum_c p_c log p_c
        loss        = ce + lbd * consistency + eta * entropy
    log pbar_i is computed as a log-sum-exp of the copies' log-probabilities, so a class whose average
    probability underflows contributes 0 (0 log 0 = 0) with finite gradients. Returns all four as a dict.
    """
    m, rows, classes = logits.shape
    log_p = F.log_softmax(logits, dim=-1)  # (m, B, C)
    ce = F.cross_entropy(logits.reshape(m * rows, classes), y.repeat(m, *([1] * (y.dim() - 1))))
    log_p_bar = torch.logsumexp(log_p, dim=0) - math.log(m)  # (B, C)
    p_bar = log_p_bar.exp()
    kl = (p_bar.unsqueeze(0) * (log_p_bar.unsqueeze(0) - log_p)).sum(-1)  # (m, B): KL(pbar_i || p_ij)
    consistency = kl.mean(0).mean()
    entropy = -(p_bar * log_p_bar).sum(-1).mean()
    return {"loss": ce + lbd * consistency + eta * entropy, "ce": ce, "consistency": consistency, "entropy": entropy}


@dataclass
class ConsistencyLoss:
    """Gaussian augmentation with consistency regularisation (Jeong & Shin, NeurIPS 2020), ALGORITHMS.md 4.

    m noisy copies x_i + sigma_i e_ij (one sigma per row, from the sigma schedule), cross-entropy on each,
    plus ``lbd`` times the mean KL divergence from the copies' average prediction to each copy's prediction,
    plus ``eta`` times the entropy of the average prediction (``consistency_objective``; the form of the
    authors' code, whose default loss this is). Defaults m = 2, lbd = 10, eta = 0.5: the paper picks
    lbd in {10, 20} per sigma on CIFAR-10; 10 is the authors' code default (``lbd`` is the paper's lambda,
    spelled so because ``lambda`` is a Python keyword).
    The logits returned for the training accuracy are those of the first copy.
    """

    m: int = 2
    lbd: float = 10.0
    eta: float = 0.5

    def __post_init__(self) -> None:
        self.m = _check_int(self.m, "m", 2)
        self.lbd = _check_number(self.lbd, "lbd", "a number >= 0", lambda v: v >= 0)
        self.eta = _check_number(self.eta, "eta", "a number >= 0", lambda v: v >= 0)

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, sigma: torch.Tensor,
                 noise: torch.Tensor | None = None) -> LossOutput:
        """``noise``: the standard-normal draws e, shape (m, *x.shape); drawn here when None."""
        noise = draw_noise(x, self.m) if noise is None else noise
        logits = noisy_logits(model, x, sigma, noise)
        terms = consistency_objective(logits, y, self.lbd, self.eta)
        return LossOutput(terms.pop("loss"), logits[0], terms)


def macer_objective(logits: torch.Tensor, y: torch.Tensor, sigma: torch.Tensor, lbd: float, gamma: float,
                    beta: float, eps: float) -> dict[str, torch.Tensor]:
    """The MACER objective (Zhai et al., ICLR 2020) from the logits of k noisy copies.

    logits: (k, B, C), copy j of row i being z_ij = f(x_i + sigma_i e_ij).
    Classification term, the soft smoothed classifier's negative log-likelihood:
        ce_i = -log( (1/k) sum_j softmax(z_ij)[y_i] )       (computed as a log-sum-exp, no epsilon)
    Radius term, on g_i = (1/k) sum_j softmax(beta * z_ij) (inverse temperature beta), with top-1 class
    a_i, top-2 class b_i and gap_i = PhiInv(g_ia) - PhiInv(g_ib):
        radius_i = sigma_i / 2 * max(0, gamma - gap_i)   if a_i = y_i and gap_i <= gamma, else 0
        loss     = (1/B) sum_i (ce_i + lbd * radius_i)
    As in the authors' code, beta enters only the radius term. PhiInv is applied to probabilities clamped
    to [eps, 1 - eps]: float32 cannot hold 1 - g for g near 1, and PhiInv(0), PhiInv(1) are infinite. The
    authors drop rows whose gap is infinite; with 2 PhiInv(1 - eps) > gamma (checked by MacerLoss) a fully
    confident row lands outside the hinge all the same, and gradients stay finite (float32 keeps 1 - eps
    below 1 for eps >= 1e-7; the default 1e-6 gives 2 PhiInv(1 - eps) = 9.5 > gamma = 8).
    """
    k, rows, classes = logits.shape
    log_p = F.log_softmax(logits, dim=-1)
    log_p_y = log_p.gather(-1, y.view(1, rows, 1).expand(k, rows, 1)).squeeze(-1)  # (k, B)
    ce = -(torch.logsumexp(log_p_y, dim=0) - math.log(k))
    g = F.softmax(beta * logits, dim=-1).mean(0)
    top2, top2_idx = g.topk(2, dim=-1)
    z = torch.special.ndtri(top2.clamp(eps, 1.0 - eps))
    gap = z[:, 0] - z[:, 1]
    active = (top2_idx[:, 0] == y) & (gap <= gamma)
    hinge = torch.where(active, gamma - gap, torch.zeros_like(gap))
    radius = sigma.to(hinge.dtype) / 2 * hinge
    return {"loss": (ce + lbd * radius).mean(), "ce": ce.mean(), "radius": radius.mean(),
            "hinge_fraction": active.float().mean()}


@dataclass
class MacerLoss:
    """MACER: maximising the certified radius (Zhai et al., ICLR 2020), ALGORITHMS.md 4.

    k noisy copies x_i + sigma_i e_ij (one sigma per row, from the sigma schedule), the soft smoothed
    classifier's negative log-likelihood plus ``lbd`` times the hinge on the certified-radius surrogate
    sigma_i / 2 * (PhiInv(top-1) - PhiInv(top-2)) of the beta-tempered average softmax, for correctly
    classified rows within ``gamma`` of the margin (``macer_objective``). Defaults follow the paper's
    CIFAR-10 settings: k = 16, lbd = 12, gamma = 8, beta = 16; ``eps`` clamps probabilities for PhiInv and
    must keep 2 PhiInv(1 - eps) > gamma. The logits returned for the training accuracy are the first copy's.
    """

    k: int = 16
    lbd: float = 12.0
    gamma: float = 8.0
    beta: float = 16.0
    eps: float = 1e-6

    def __post_init__(self) -> None:
        eps, gamma = self.eps, self.gamma
        self.k = _check_int(self.k, "k", 1)
        self.lbd = _check_number(self.lbd, "lbd", "a number >= 0", lambda v: v >= 0)
        self.gamma = _check_number(gamma, "gamma", "a number > 0", lambda v: v > 0)
        self.beta = _check_number(self.beta, "beta", "a number > 0", lambda v: v > 0)
        self.eps = _check_number(eps, "eps", "a number in (0, 0.5)", lambda v: 0 < v < 0.5)
        # the probabilities are float32: 1 - eps must stay below 1 there (eps >= 1e-7), and a fully confident
        # row must land outside the hinge: 2 PhiInv(1 - eps) > gamma, i.e. eps < Phi(-gamma / 2)
        limit = NormalDist().cdf(-self.gamma / 2)
        if not 1e-7 <= self.eps < limit:
            raise ConfigError(f"eps={eps!r} is invalid for gamma={gamma!r}: expected "
                              f"1e-07 <= eps < Phi(-gamma/2) = {limit:.3g}, so that 1 - eps is below 1 in float32 "
                              f"and a fully confident prediction falls outside the hinge")

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, sigma: torch.Tensor,
                 noise: torch.Tensor | None = None) -> LossOutput:
        """``noise``: the standard-normal draws e, shape (k, *x.shape); drawn here when None."""
        noise = draw_noise(x, self.k) if noise is None else noise
        logits = noisy_logits(model, x, sigma, noise)
        terms = macer_objective(logits, y, sigma, self.lbd, self.gamma, self.beta, self.eps)
        return LossOutput(terms.pop("loss"), logits[0], terms)
