"""Training losses for smoothed classifiers (the ``train/loss`` config group).

A loss is called as ``loss(model, x, y, sigma)`` with x in [0, 1], y the labels and sigma a per-row
tensor of noise levels, and returns ``LossOutput(loss, logits)`` where logits are the model's outputs
on (one set of) noisy inputs, used for the training accuracy. The sigma schedule (one sigma, or the
per-example table of Insta-RS Train) is chosen separately, so every loss works with every schedule.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError


@dataclass
class LossOutput:
    loss: torch.Tensor
    logits: torch.Tensor


def add_noise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """x + sigma_i * e_i with e ~ N(0, I), one sigma per row, in the input's dtype (float32 for images)."""
    return x + torch.randn_like(x) * sigma.view(-1, *([1] * (x.dim() - 1)))


class GaussianAugmentation:
    """Cohen et al. (2019): cross-entropy of f(x + sigma * e), one noise draw per example."""

    name = "gaussian"

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, sigma: torch.Tensor) -> LossOutput:
        logits = model(add_noise(x, sigma))
        return LossOutput(F.cross_entropy(logits, y), logits)


LOSSES = {"gaussian": GaussianAugmentation}


def build_loss(name: str, **params):
    """The loss named by ``train.loss.name`` with its parameters; ConfigError for an unknown name or parameter."""
    if name not in LOSSES:
        raise ConfigError(f"train.loss.name={name!r} is not a known loss: expected one of {', '.join(sorted(LOSSES))}")
    try:
        return LOSSES[name](**params)
    except TypeError as error:
        raise ConfigError(f"train.loss={{name: {name}, ...}} has a parameter the loss does not take ({error}); "
                          f"see conf/train/loss/{name}.yaml") from error
