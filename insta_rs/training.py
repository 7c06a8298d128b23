"""Training smoothed classifiers with Lightning (ALGORITHMS.md section 4).

``SmoothingClassifier`` is one LightningModule whose training runs as scheduled phases. The phase
is a pure function of the epoch (``TrainSettings.phase_at``), so a run resumed from a checkpoint
lands in the right stage. ``gaussian`` is Gaussian data augmentation at one sigma (Cohen et al.):
loss = cross-entropy of f(x + sigma * e), e ~ N(0, I), with x in [0, 1] pixel units (the loss is the
``train/loss`` choice). ``insta_rs`` is Insta-RS Train: stage 1 (epochs [0, E1)) is Gaussian training
at sigma0; stage 2 keeps one sigma per training example (a table indexed by dataset index), updates
the visited examples' sigmas before each step (``insta_rs.sigma_table``) and trains each example at
its own sigma. Under DDP every rank gathers all ranks' (index, sigma, label) updates and applies the
same ones, so the tables stay identical; the table is a plain tensor, not a module buffer, so DDP's
buffer broadcast never overwrites it. Checkpoints carry the table and the RNG states.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn

from . import sigma_table as table_rules
from .errors import ConfigError, check, settings_from_config
from .losses import build_loss

METHODS = ("gaussian", "insta_rs")
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
    # insta_rs only (ALGORITHMS.md 4)
    stage1_epochs: int = 0
    sigma0: float | None = None
    eta: float = 0.1
    sigma_min: float = 0.05
    sigma_max: float = 2.0
    m_update: int = 16
    update_every: int = 1

    @classmethod
    def from_dict(cls, values: dict) -> "TrainSettings":
        """Build from the ``train`` config; an unknown key is a ConfigError naming it."""
        return settings_from_config(cls, values, "train", f"a setting of train.method={values.get('method')!r}")

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
        if self.method == "insta_rs":
            check(isinstance(self.stage1_epochs, int) and 0 <= self.stage1_epochs < self.epochs, "train.stage1_epochs",
                  self.stage1_epochs, f"an integer in [0, train.epochs) = [0, {self.epochs})")
            check(self.sigma_min is not None and self.sigma_min == self.sigma_min and self.sigma_min > 0,
                  "train.sigma_min", self.sigma_min, "a number > 0")
            check(self.sigma_max is not None and self.sigma_max == self.sigma_max and self.sigma_max >= self.sigma_min,
                  "train.sigma_max", self.sigma_max, f"a number >= train.sigma_min ({self.sigma_min})")
            check(self.sigma0 is not None and self.sigma_min <= self.sigma0 <= self.sigma_max, "train.sigma0",
                  self.sigma0, f"a number in [train.sigma_min, train.sigma_max] = [{self.sigma_min}, {self.sigma_max}]")
            check(self.eta is not None and self.eta > 0 and math.isfinite(self.eta), "train.eta", self.eta,
                  "a number > 0 (the log-sigma step)")
            check(isinstance(self.m_update, int) and self.m_update >= 1, "train.m_update", self.m_update,
                  "an integer >= 1")
            check(isinstance(self.update_every, int) and self.update_every >= 1, "train.update_every",
                  self.update_every, "an integer >= 1 (1: update the sigmas of every batch)")
            check(self.sigma_levels == [float(self.sigma0)], "train.sigma", self.sigma,
                  f"train.sigma0 ({self.sigma0}) or left at its default ${{.sigma0}} for train=insta_rs")

    @property
    def sigma_levels(self) -> list[float]:
        """train.sigma as a list (one element for a single sigma)."""
        return [float(s) for s in self.sigma] if isinstance(self.sigma, (list, tuple)) else [float(self.sigma)]

    def phase_at(self, epoch: int) -> str:
        """The training phase of an epoch: ``gaussian`` (one sigma, or levels drawn per row), or for
        insta_rs ``gaussian`` in stage 1 (epochs [0, stage1_epochs)) and ``instance`` in stage 2."""
        if self.method == "insta_rs" and epoch >= self.stage1_epochs:
            return "instance"
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
                 config: dict | None = None, dataset_info: dict | None = None, num_train: int | None = None,
                 run_dir: str | Path | None = None):
        super().__init__()
        self.model = model
        self.num_classes = num_classes
        self.settings = settings
        self.run_config = config or {}
        self.dataset_info = dataset_info or {}
        self.loss = build_loss(**settings.loss)
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.sigma_table: torch.Tensor | None = None
        if settings.method == "insta_rs":
            check(num_train is not None and num_train >= 1, "num_train", num_train,
                  "the number of training examples (the sigma table's length)")
            # plain tensors, not buffers: DDP broadcasts buffers from rank 0, which would overwrite updates
            self.sigma_table = torch.full((num_train,), float(settings.sigma0))
            self.label_table = torch.full((num_train,), -1, dtype=torch.long)
            self.difficulty = torch.full((num_train,), float("nan"))
        self._visits = 0
        # debug hook for tests: set to a list and every update appends this rank's own (idx, sigma) before the gather
        self.recorded_updates: list | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    @property
    def phase(self) -> str:
        return self.settings.phase_at(self.current_epoch)

    def noise_levels(self, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Per-row sigma for the training batch in the current phase: the one global sigma, or for a list
        of levels one level drawn uniformly per row; in the ``instance`` phase each example's own sigma."""
        if self.phase == "instance":
            return self._table(x.device)[idx].to(x.dtype)
        return self._draw_levels(x.shape[0], x.device)

    # -- the sigma table (insta_rs) ------------------------------------------------------------------

    def _table(self, device) -> torch.Tensor:
        if self.sigma_table.device != torch.device(device):
            self.sigma_table = self.sigma_table.to(device)
            self.label_table = self.label_table.to(device)
            self.difficulty = self.difficulty.to(device)
        return self.sigma_table

    @torch.no_grad()
    def update_sigmas(self, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor) -> None:
        """ALGORITHMS.md 4: update the batch's sigmas (model in eval mode, no gradient; the 3 candidates x
        B rows x m_update draws in one forward), then make every rank apply every rank's updates.

        DDP: every rank all_gathers (idx, new sigma, label, difficulty) -- the same shapes on every rank, as
        the distributed sampler pads every rank to the same number of rows -- stacked rank 0 first; an index
        that occurs twice (the sampler's padding repeats examples) takes the lowest rank's value
        (``first_occurrence``), and every rank applies the same pairs, so the tables stay identical.

        Difficulty signal: the estimate phat_y(sigma0) of an example's first stage-2 visit, i.e. the accuracy
        under noise at sigma0 of the model that finished stage 1 (for batches later in the first stage-2
        epoch, after that epoch's earlier steps; with update_every > 1 possibly in a later epoch)."""
        s = self.settings
        table = self._table(x.device)
        current = table[idx]
        candidates = table_rules.candidate_sigmas(current, s.eta, s.sigma_min, s.sigma_max)
        was_training = self.model.training
        self.model.eval()
        p_correct = table_rules.estimate_p_correct(self.model, x, y, candidates, s.m_update)
        self.model.train(was_training)
        new = table_rules.choose_sigmas(candidates, p_correct, s.eta, s.sigma_min, s.sigma_max, s.m_update)
        if self.recorded_updates is not None:
            self.recorded_updates.append({"idx": idx.cpu(), "sigma": new.cpu()})
        first_seen = torch.isnan(self.difficulty[idx])
        difficulty = torch.where(first_seen, p_correct[:, 1], self.difficulty[idx])
        idx_all, new_all, y_all, diff_all = (self._gather(t) for t in (idx, new, y, difficulty))
        keep = table_rules.first_occurrence(idx_all)
        table[idx_all[keep]] = new_all[keep].to(table.dtype)
        self.label_table[idx_all[keep]] = y_all[keep]
        self.difficulty[idx_all[keep]] = diff_all[keep].to(self.difficulty.dtype)

    def _gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """All ranks' values stacked rank after rank (rank 0 first); the tensor itself without DDP."""
        if self._trainer is None or self.trainer.world_size == 1:
            return tensor
        return self.all_gather(tensor).reshape(-1, *tensor.shape[1:])

    def _draw_levels(self, rows: int, device) -> torch.Tensor:
        levels = torch.tensor(self.settings.sigma_levels, dtype=torch.float32, device=device)
        if len(levels) == 1:
            return levels.expand(rows).clone()
        return levels[torch.randint(len(levels), (rows,), device=device)]

    def training_step(self, batch, batch_idx):
        x, y, idx = batch
        if self.phase == "instance":
            if self._visits % self.settings.update_every == 0:
                self.update_sigmas(x, y, idx)
            self._visits += 1
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

    def on_train_epoch_start(self) -> None:
        self._epoch_started = time.perf_counter()

    def on_train_epoch_end(self) -> None:
        # wall seconds of the epoch's training loop (validation excluded): stage 2's cost against stage 1's
        self.log("train/epoch_seconds", time.perf_counter() - self._epoch_started, on_step=False, on_epoch=True,
                 rank_zero_only=True)
        if self.sigma_table is None:
            return
        s = self.settings
        stats = table_rules.table_statistics(self._table(self.device), s.sigma_min, s.sigma_max)
        self.log_dict({f"sigma_table/{key}": value for key, value in stats.items()}, on_step=False, on_epoch=True,
                      rank_zero_only=True)
        if not self.trainer.is_global_zero:
            return
        values = self.sigma_table.cpu().numpy()
        for logger in self.loggers:
            if type(logger).__name__ == "WandbLogger":
                import wandb

                logger.experiment.log({"sigma_table/hist": wandb.Histogram(values), "epoch": self.current_epoch})
            elif hasattr(getattr(logger, "experiment", None), "add_histogram"):  # TensorBoard-like loggers
                logger.experiment.add_histogram("sigma_table/hist", values, global_step=self.current_epoch)

    def on_train_end(self) -> None:
        """Export the table as ``train_sigma.pt`` in the run directory and plot it (sigma_hist_train.png).

        The file is a dict: ``idx`` (LongTensor, the dataset indices of the examples stage 2 visited,
        ascending), ``sigma`` (FloatTensor, their learned sigmas), ``label`` (LongTensor, their labels),
        ``difficulty`` (FloatTensor, see ``update_sigmas``; NaN where unknown), ``levels_hint`` (None: no
        preferred set of sigma levels) and ``config`` (the resolved run configuration)."""
        if self.sigma_table is None or self.run_dir is None or not self.trainer.is_global_zero:
            return
        visited = (self.label_table >= 0).nonzero().view(-1).cpu()
        table = {
            "idx": visited,
            "sigma": self.sigma_table.cpu()[visited],
            "label": self.label_table.cpu()[visited],
            "difficulty": self.difficulty.cpu()[visited],
            "levels_hint": None,
            "config": self.run_config,
        }
        path = self.run_dir / "train_sigma.pt"
        tmp = path.with_name(path.name + ".tmp")
        torch.save(table, tmp)
        tmp.replace(path)
        table_rules.plot_sigma_table(table["sigma"].numpy(), table["difficulty"].numpy(),
                                     self.run_dir / "sigma_hist_train.png",
                                     f"Insta-RS Train: {len(visited)} examples after {self.current_epoch} epochs")

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["insta_rs"] = {
            "format": 1,
            "config": self.run_config,
            "dataset_info": self.dataset_info,
            "num_classes": self.num_classes,
            "rng": rng_states(),
        }
        if self.sigma_table is not None:
            checkpoint["insta_rs"]["sigma_table"] = self.sigma_table.detach().cpu().clone()
            checkpoint["insta_rs"]["label_table"] = self.label_table.detach().cpu().clone()
            checkpoint["insta_rs"]["difficulty"] = self.difficulty.detach().cpu().clone()
            checkpoint["insta_rs"]["visits"] = self._visits

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Resume: the sigma table, the update counter and the RNG states (so a resumed run draws the
        noise an uninterrupted one would)."""
        stored = checkpoint.get("insta_rs", {})
        if self.sigma_table is not None:
            if "sigma_table" not in stored or stored["sigma_table"].shape != self.sigma_table.shape:
                raise ConfigError("ckpt_path: the checkpoint has no sigma table of this data set's length; resume "
                                  "train=insta_rs only from its own checkpoints")
            self.sigma_table = stored["sigma_table"].clone()
            self.label_table = stored["label_table"].clone()
            self.difficulty = stored["difficulty"].clone()
            self._visits = int(stored.get("visits", 0))
        if stored.get("rng"):
            restore_rng_states(stored["rng"])


def rng_states() -> dict:
    """torch, CUDA, numpy and Python RNG states as tensors and plain values, so a checkpoint that holds
    them still loads with ``torch.load(weights_only=True)``."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
    }


def restore_rng_states(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))
