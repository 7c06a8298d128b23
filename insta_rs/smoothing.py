"""Gaussian randomized smoothing: sampling, counting, CERTIFY and PREDICT (ALGORITHMS.md section 1).

``Smooth`` wraps a base classifier f. The smoothed classifier at noise level sigma is
g(x) = argmax_c P[f(x + sigma * e) = c], e ~ N(0, I), with inputs in [0, 1] pixel units.
Noise is drawn in fixed-size chunks on the model's device, always in float32 (even when the model
runs under autocast), and classes are counted on the device with ``bincount``.
Several inputs, each with its own sigma, can share one forward pass (``sample_counts`` takes a
batch of inputs and a per-row sigma): the sigma search and batched certification rely on it.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .certificates import (
    ABSTAIN,
    check_alpha,
    clopper_pearson_lower,
    cohen_radius,
    predict_is_confident,
)
from .errors import check


@dataclass(frozen=True)
class Certificate:
    """The result of CERTIFY at one input.

    predict: the certified class, or ABSTAIN (-1) when pA_lower < 1/2.
    radius: sigma * PhiInv(pA_lower), the L2 radius in pixel units within which g_sigma is constant
        with probability >= 1 - alpha over the noise draws; 0 when abstaining.
    p_lower: the one-sided Clopper-Pearson lower bound on P[f(x + sigma e) = predict].
    count: how many of the n selection-independent draws landed on the candidate class.
    sigma: the noise level that was certified.
    """

    predict: int
    radius: float
    p_lower: float
    count: int
    n: int
    sigma: float


def row_generator(seed: int, idx: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator seeded from (seed, idx) alone, so a row's draws do not depend on which rows ran before it."""
    state = np.random.SeedSequence([int(seed), int(idx)]).generate_state(2, dtype=np.uint32)
    gen = torch.Generator(device=device)
    gen.manual_seed(int(state[0]) << 32 | int(state[1]))
    return gen


class Smooth:
    """A smoothed classifier around ``base_classifier`` (Cohen, Rosenfeld & Kolter 2019).

    ``certify`` returns a sound L2 certificate of g_sigma at x (guarantee ``sound``: it holds with
    probability >= 1 - alpha over the noise). ``predict`` returns g_sigma(x) or ABSTAIN, wrong with
    probability at most alpha. ``batch_size`` is the number of noisy images per forward pass.
    """

    def __init__(
        self,
        base_classifier: nn.Module,
        num_classes: int,
        batch_size: int = 1000,
        device: torch.device | str | None = None,
        autocast_dtype: torch.dtype | None = None,
    ):
        check(isinstance(batch_size, int) and batch_size >= 1, "certify.batch_size", batch_size, "an integer >= 1")
        self.base_classifier = base_classifier.eval()
        self.num_classes = num_classes
        self.batch_size = batch_size
        self.device = torch.device(device) if device is not None else _module_device(base_classifier)
        self.autocast_dtype = autocast_dtype

    @torch.inference_mode()
    def sample_counts(
        self,
        x: torch.Tensor,
        sigma: torch.Tensor | float,
        num: int,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Class counts of f(x_b + sigma_b * e) over ``num`` draws for each input of the batch.

        x: (B, C, H, W) or one (C, H, W) image; sigma: a float or a (B,) tensor (one sigma per input).
        Returns a (B, num_classes) int64 tensor on the model's device, or (num_classes,) for one image.
        """
        single = x.dim() == 3
        if single:
            x = x.unsqueeze(0)
        x = x.to(self.device, torch.float32)
        rows = x.shape[0]
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=self.device).reshape(-1).expand(rows)
        counts = torch.zeros(rows * self.num_classes, dtype=torch.long, device=self.device)
        total = rows * num
        for start in range(0, total, self.batch_size):
            stop = min(start + self.batch_size, total)
            owner = torch.arange(start, stop, device=self.device) // num
            noise = torch.randn((stop - start, *x.shape[1:]), generator=generator, device=self.device, dtype=torch.float32)
            noisy = x[owner] + noise * sigma[owner].view(-1, 1, 1, 1)
            with self._autocast():
                predictions = self.base_classifier(noisy).argmax(dim=1)
            counts += torch.bincount(owner * self.num_classes + predictions, minlength=rows * self.num_classes)
        counts = counts.view(rows, self.num_classes)
        return counts[0] if single else counts

    def certify(
        self,
        x: torch.Tensor,
        sigma: float,
        n0: int,
        n: int,
        alpha: float,
        generator: torch.Generator | None = None,
    ) -> Certificate:
        """CERTIFY(f, sigma, x, n0, n, alpha) of ALGORITHMS.md 1: select the class with n0 draws, bound its
        probability with n fresh draws. Sound with probability >= 1 - alpha."""
        check_certify_settings(sigma, n0, n, alpha)
        selection = self.sample_counts(x, sigma, n0, generator)
        candidate = int(selection.argmax())
        estimation = self.sample_counts(x, sigma, n, generator)
        count = int(estimation[candidate])
        p_lower = clopper_pearson_lower(count, n, alpha)
        if p_lower < 0.5:
            return Certificate(ABSTAIN, 0.0, p_lower, count, n, float(sigma))
        return Certificate(candidate, cohen_radius(sigma, p_lower), p_lower, count, n, float(sigma))

    def predict(
        self,
        x: torch.Tensor,
        sigma: float,
        n: int,
        alpha: float,
        generator: torch.Generator | None = None,
    ) -> int:
        """PREDICT of ALGORITHMS.md 1: the top class if the binomial test of the top two counts rejects
        p = 1/2 at level alpha, else ABSTAIN. Returns a wrong class with probability at most alpha."""
        check_certify_settings(sigma, 1, n, alpha)
        counts = self.sample_counts(x, sigma, n, generator)
        top2 = counts.topk(2)
        c1, c2 = int(top2.values[0]), int(top2.values[1])
        return int(top2.indices[0]) if predict_is_confident(c1, c2, alpha) else ABSTAIN

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)


def _module_device(module: nn.Module) -> torch.device:
    for tensor in list(module.parameters()) + list(module.buffers()):
        return tensor.device
    return torch.device("cpu")


def check_certify_settings(sigma: float, n0: int, n: int, alpha: float) -> None:
    """ConfigError for values CERTIFY cannot use: sigma <= 0 or NaN, n0 < 1, n < 1, alpha outside (0, 1)."""
    check(isinstance(sigma, (int, float)) and sigma > 0 and np.isfinite(sigma), "sigma", sigma, "a finite number > 0")
    check(isinstance(n0, int) and n0 >= 1, "certify.n0", n0, "an integer >= 1")
    check(isinstance(n, int) and n >= 1, "certify.n", n, "an integer >= 1")
    check_alpha(alpha)
