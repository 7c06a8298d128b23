"""Training smoothed classifiers with Lightning (ALGORITHMS.md section 4).

``SmoothingClassifier`` is one LightningModule whose training runs as scheduled phases. The phase
is a pure function of the epoch (``TrainSettings.phase_at``), so a run resumed from a checkpoint
lands in the right stage. ``gaussian`` is Gaussian data augmentation at one sigma (Cohen et al.):
loss = cross-entropy of f(x + sigma * e), e ~ N(0, I), with x in [0, 1] pixel units.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError, check
from .losses import build_loss

METHODS = ("gaussian",)
LR_SCHEDULES = ("step", "cosine", "constant")


@dataclass
class TrainSettings:
    """Everything the training method needs, as plain values (the ``train`` config group, flattened).

    method: the training method (one of METHODS). sigma: the Gaussian augmentation level in pixel
    units, or a list of levels: each example then draws its sigma uniformly from the list at every
    step (a model trained across sigmas, for the instance-wise methods). lr_schedule: ``step`` (multiply by lr_gamma every lr_step_size epochs, as Cohen et al.),
    ``cosine`` (to 0 over ``epochs``) or ``constant``. val_noise_draws: noisy copies per validation
    input for the ``val/acc_noisy`` metric.
    """

    method: str = "gaussian"
    sigma: float | list[float] = 0.25
    epochs: int = 10
    batch_size: int = 64
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    lr_schedule: str = "cosine"
    lr_step_size: int = 30
    lr_gamma: float = 0.1
    val_noise_draws: int = 4
    loss: dict = field(default_factory=lambda: {"name": "gaussian"})

    @classmethod
    def from_dict(cls, values: dict) -> "TrainSettings":
        """Build from the ``train`` config; an unknown key is a ConfigError naming it."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"train.{unknown[0]} is not a setting of train.method={values.get('method')!r}: "
                              f"expected one of {', '.join(sorted(known))}")
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        check(self.method in METHODS, "train.method", self.method, f"one of {', '.join(METHODS)}")
        levels = self.sigma_levels
        check(len(levels) >= 1 and all(isinstance(s, (int, float)) and s >= 0 and s == s for s in levels),
              "train.sigma", self.sigma, "a number >= 0 (0 trains without noise) or a non-empty list of them")
        check(isinstance(self.epochs, int) and self.epochs >= 1, "train.epochs", self.epochs, "an integer >= 1")
        check(isinstance(self.batch_size, int) and self.batch_size >= 1, "train.batch_size", self.batch_size,
              "an integer >= 1")
        check(self.lr > 0, "train.lr", self.lr, "a number > 0")
        check(self.lr_schedule in LR_SCHEDULES, "train.lr_schedule", self.lr_schedule, f"one of {', '.join(LR_SCHEDULES)}")
        check(self.val_noise_draws >= 1, "train.val_noise_draws", self.val_noise_draws, "an integer >= 1")

    @property
    def sigma_levels(self) -> list[float]:
        """train.sigma as a list (one element for a single sigma)."""
        return [float(s) for s in self.sigma] if isinstance(self.sigma, (list, tuple)) else [float(self.sigma)]

    def phase_at(self, epoch: int) -> str:
        """The training phase of an epoch. Gaussian training has one phase for all epochs."""
        return "gaussian"


PHASE_IDS = {"gaussian": 0, "instance": 1}


class SmoothingClassifier(pl.LightningModule):
    """A base classifier trained for randomized smoothing.

    Batches are (x, y, idx) with x in [0, 1]. Logs ``train/loss``, ``train/acc`` (on noisy inputs),
    ``train/phase``, ``train/sigma_mean``, and per validation epoch ``val/acc_clean``, ``val/acc_noisy``
    (accuracy of f(x + sigma e) over ``val_noise_draws`` draws per input; the checkpoint monitor) and
    ``val/loss``. ``config`` (the resolved run configuration, plain containers) and ``dataset_info``
    travel inside every checkpoint under the key ``insta_rs``, so certification needs nothing else.
    """

    def __init__(self, model: nn.Module, num_classes: int, settings: TrainSettings,
                 config: dict | None = None, dataset_info: dict | None = None):
        super().__init__()
        self.model = model
        self.num_classes = num_classes
        self.settings = settings
        self.run_config = config or {}
        self.dataset_info = dataset_info or {}
        self.loss = build_loss(**settings.loss)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    @property
    def phase(self) -> str:
        return self.settings.phase_at(self.current_epoch)

    def noise_levels(self, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Per-row sigma for the training batch in the current phase: the one global sigma, or for a list
        of levels one level drawn uniformly per row."""
        return self._draw_levels(x.shape[0], x.device)

    def _draw_levels(self, rows: int, device) -> torch.Tensor:
        levels = torch.tensor(self.settings.sigma_levels, dtype=torch.float32, device=device)
        if len(levels) == 1:
            return levels.expand(rows).clone()
        return levels[torch.randint(len(levels), (rows,), device=device)]

    def training_step(self, batch, batch_idx):
        x, y, idx = batch
        sigma = self.noise_levels(x, idx)
        out = self.loss(self.model, x, y, sigma)
        loss, logits = out.loss, out.logits
        acc = (logits.argmax(1) == y).float().mean()
        self.log_dict({"train/loss": loss, "train/acc": acc}, on_step=False, on_epoch=True, prog_bar=True,
                      sync_dist=True, batch_size=x.shape[0])
        self.log_dict({"train/phase": float(PHASE_IDS[self.phase]), "train/sigma_mean": sigma.mean()},
                      on_step=False, on_epoch=True, sync_dist=True, batch_size=x.shape[0])
        return loss

    def validation_step(self, batch, batch_idx):
        x, y, _ = batch
        clean_logits = self.model(x)
        draws = self.settings.val_noise_draws
        repeated = x.repeat_interleave(draws, dim=0)
        sigma = self._draw_levels(repeated.shape[0], x.device).view(-1, *([1] * (x.dim() - 1)))
        noisy_logits = self.model(repeated + sigma * torch.randn_like(repeated))
        metrics = {
            "val/acc_clean": (clean_logits.argmax(1) == y).float().mean(),
            "val/acc_noisy": (noisy_logits.argmax(1) == y.repeat_interleave(draws)).float().mean(),
            "val/loss": F.cross_entropy(noisy_logits, y.repeat_interleave(draws)),
        }
        self.log_dict(metrics, on_step=False, on_epoch=True, prog_bar=True, sync_dist=True, batch_size=x.shape[0])

    def configure_optimizers(self):
        s = self.settings
        optimizer = torch.optim.SGD(self.parameters(), lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay,
                                    nesterov=s.nesterov)
        if s.lr_schedule == "step":
            scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=s.lr_step_size, gamma=s.lr_gamma)
        elif s.lr_schedule == "cosine":
            scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=s.epochs)
        else:
            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: 1.0)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["insta_rs"] = {
            "format": 1,
            "config": self.run_config,
            "dataset_info": self.dataset_info,
            "num_classes": self.num_classes,
        }
