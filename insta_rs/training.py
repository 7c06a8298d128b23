"""Training smoothed classifiers with Lightning (ALGORITHMS.md section 4).

The ``train`` config group picks a sigma schedule by its settings class, and ``train/loss`` the loss
(``insta_rs.losses``), so every loss works with every schedule:

- ``TrainSettings`` (``train=gaussian``): Gaussian data augmentation at one sigma (Cohen et al.), or at a
  level drawn per row from a list of sigmas; loss of f(x + sigma * e), e ~ N(0, I), x in [0, 1] pixel units.
- ``InstaRSSettings`` (``train=insta_rs``): Insta-RS Train. Stage 1 (epochs [0, E1)) is Gaussian training at
  sigma0; stage 2 keeps one sigma per training example (``insta_rs.sigma_table.SigmaTable``), updates the
  visited examples' sigmas before each step and trains each example at its own sigma.

``SmoothingClassifier`` is one LightningModule whose phase is a pure function of the epoch
(``phase_at``), so a run resumed from a checkpoint lands in the right stage. Checkpoints carry the table and
the RNG states. Each DDP rank draws its own noise (``on_train_start``); the distributed sampler's shuffle
keeps one seed shared by all ranks. ``fit`` runs a module as train.py does (resume check, config, metrics);
``training_objective`` is what train.py then returns to a sweeper (``ObjectiveSettings``: the last validation
accuracy under noise, or certified accuracy at one radius on the validation split).
"""

from __future__ import annotations

import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from .certification_file import first_difference, write_atomic
from .checkpoints import read_checkpoint
from .errors import CheckpointError, CheckpointSettingError, ConfigError, check
from .losses import GaussianAugmentation
from .certificates import clopper_pearson_lower, cohen_radius
from .sigma_table import PROBE_SIGNALS, ProbeSigmaTable, SigmaTable, SigmaTableMonitor
from .smoothing import Smooth, check_certify_settings, noise_sigma, row_generator

LR_SCHEDULES = ("step", "cosine", "constant")
UPDATE_RULES = ("search", "probe")
INITS = ("sigma0", "search")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass
class TrainSettings:
    """``train=gaussian``, and what every ``train`` choice shares; every default of the group lives here.

    sigma: the Gaussian augmentation level in pixel units (0 trains without noise), or a list of levels: each
    example then draws its sigma uniformly from the list at every step (a model trained across sigmas, for
    the instance-wise methods). lr_schedule: ``step`` (multiply by lr_gamma every lr_step_size epochs, as
    Cohen et al.), ``cosine`` (to 0 over ``epochs``) or ``constant``. val_noise_draws: noisy copies per
    validation input for ``val/acc_noisy``. loss: the loss object (the ``train/loss`` choice), called as
    ``loss(model, x, y, sigma)``; None: Gaussian augmentation's cross-entropy. Checked when built.
    """

    sigma: Any = 0.25
    epochs: int = 30
    batch_size: int = 64
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    lr_schedule: str = "cosine"
    lr_step_size: int = 30
    lr_gamma: float = 0.1
    val_noise_draws: int = 4
    loss: Any = None

    def __post_init__(self) -> None:
        self.loss = GaussianAugmentation() if self.loss is None else self.loss
        self.validate()

    def validate(self) -> None:
        levels = self.sigma if isinstance(self.sigma, (list, tuple)) else [self.sigma]
        check(len(levels) >= 1 and all(isinstance(s, (int, float)) and s >= 0 and math.isfinite(s) for s in levels),
              "sigma", self.sigma, "a finite number >= 0 (0 trains without noise) or a non-empty list of them")
        check(_is_int(self.epochs) and self.epochs >= 1, "epochs", self.epochs, "an integer >= 1")
        check(_is_int(self.batch_size) and self.batch_size >= 1, "batch_size", self.batch_size,
              "an integer >= 1")
        check(self.lr > 0, "lr", self.lr, "a number > 0")
        check(self.lr_schedule in LR_SCHEDULES, "lr_schedule", self.lr_schedule, f"one of {', '.join(LR_SCHEDULES)}")
        check(_is_int(self.val_noise_draws) and self.val_noise_draws >= 1, "val_noise_draws",
              self.val_noise_draws, "an integer >= 1")

    @property
    def sigma_levels(self) -> list[float]:
        """sigma as a list (one element for a single sigma)."""
        return [float(s) for s in self.sigma] if isinstance(self.sigma, (list, tuple)) else [float(self.sigma)]

    def phase_at(self, epoch: int) -> str:
        """The training phase of an epoch: ``gaussian`` (one sigma, or levels drawn per row)."""
        return "gaussian"

    def sigma_table(self, size: int | None) -> SigmaTable | None:
        """The per-example sigma table this schedule trains with (None: no table)."""
        return None

    def stage1_levels(self, rows: int, device) -> torch.Tensor | None:
        """Per-row sigmas drawn otherwise than from ``sigma_levels`` outside the instance phase (None: none)."""
        return None


@dataclass
class InstaRSSettings(TrainSettings):
    """``train=insta_rs`` (ALGORITHMS.md 4): stage 1 = Gaussian training at sigma0 for stage1_epochs epochs;
    stage 2 = one sigma per training example, in [sigma_min, sigma_max], updated by ``update_rule``:

    - ``search`` (ALGORITHMS.md 4): from the candidates sigma * exp(-eta, 0, +eta) with m_update draws each,
      before the step of every update_every-th batch (counted across epochs and resumes), then the step at
      each example's own sigma (``SigmaTable``);
    - ``probe`` (docs/insta_rs_train.md): no forward pass of its own; each visit trains the example at
      sigma * exp(+-eta), one side per visit, and moves sigma by one step toward the side whose running
      estimate of the label's signal (``probe_signal``: the softmax probability of y, or correct) over the
      last ``probe_memory`` visits gives the larger estimated radius, or down when the estimate at sigma is
      below 1/2 (``ProbeSigmaTable``). m_update and update_every do not apply.

    stage1_sigma: stage 1's noise, ``sigma0``, ``log_uniform`` (a sigma per row and step, log-uniform over
    [sigma_min, sigma_max]) or a list of levels (one drawn per row and step). init: the table's start,
    ``sigma0`` for every example, or ``search``: at the start of stage 2, per training example the best of
    ``init_levels`` sigmas spaced evenly in log-sigma over [sigma_min, sigma_max] by Rhat_y with
    ``init_draws`` draws each (``search_initial_sigmas``; init_levels x init_draws forwards per example,
    once). sigma (validation's, and certify.py's default fixed sigma) must equal sigma0; None means sigma0."""

    sigma: Any = None
    stage1_epochs: int = 10
    sigma0: float = 0.25
    eta: float = 0.1
    sigma_min: float = 0.05
    sigma_max: float = 1.0
    m_update: int = 16
    update_every: int = 1
    update_rule: str = "search"
    probe_signal: str = "prob"
    probe_memory: int = 8
    stage1_sigma: Any = "sigma0"
    init: str = "sigma0"
    init_levels: int = 5
    init_draws: int = 4

    def __post_init__(self) -> None:
        self.sigma = self.sigma0 if self.sigma is None else self.sigma
        super().__post_init__()

    def validate(self) -> None:
        super().validate()
        check(_is_int(self.stage1_epochs) and 0 <= self.stage1_epochs < self.epochs, "stage1_epochs",
              self.stage1_epochs, f"an integer in [0, epochs={self.epochs})")
        check(self.sigma_min is not None and self.sigma_min == self.sigma_min and self.sigma_min > 0,
              "sigma_min", self.sigma_min, "a number > 0")
        check(self.sigma_max is not None and self.sigma_max == self.sigma_max and self.sigma_max >= self.sigma_min,
              "sigma_max", self.sigma_max, f"a number >= sigma_min={self.sigma_min}")
        check(self.sigma0 is not None and self.sigma_min <= self.sigma0 <= self.sigma_max, "sigma0",
              self.sigma0, f"a number in [sigma_min={self.sigma_min}, sigma_max={self.sigma_max}]")
        check(self.eta is not None and self.eta > 0 and math.isfinite(self.eta), "eta", self.eta,
              "a number > 0 (the log-sigma step)")
        check(_is_int(self.m_update) and self.m_update >= 1, "m_update", self.m_update, "an integer >= 1")
        check(_is_int(self.update_every) and self.update_every >= 1, "update_every", self.update_every,
              "an integer >= 1 (1: update the sigmas of every batch)")
        check(self.sigma_levels == [float(self.sigma0)], "sigma", self.sigma,
              f"sigma0 ({self.sigma0}) or left at its default ${{.sigma0}} for train=insta_rs")
        check(self.update_rule in UPDATE_RULES, "update_rule", self.update_rule, f"one of {', '.join(UPDATE_RULES)}")
        check(self.probe_signal in PROBE_SIGNALS, "probe_signal", self.probe_signal,
              f"one of {', '.join(PROBE_SIGNALS)}")
        check(_is_int(self.probe_memory) and self.probe_memory >= 2, "probe_memory", self.probe_memory,
              "an integer >= 2 (visits per side in the running mean; 1 clamps every estimate to 1/2)")
        levels = self.stage1_sigma if isinstance(self.stage1_sigma, (list, tuple)) else None
        check(self.stage1_sigma in ("sigma0", "log_uniform") or levels is not None and len(levels) >= 1 and all(
              isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < math.inf for v in levels),
              "stage1_sigma", self.stage1_sigma, "sigma0, log_uniform or a non-empty list of sigmas >= 0")
        check(self.init in INITS, "init", self.init, f"one of {', '.join(INITS)}")
        check(_is_int(self.init_levels) and self.init_levels >= 2, "init_levels", self.init_levels, "an integer >= 2")
        check(_is_int(self.init_draws) and self.init_draws >= 1, "init_draws", self.init_draws, "an integer >= 1")

    def stage1_levels(self, rows: int, device) -> torch.Tensor | None:
        """Stage 1's per-row sigmas (float32), or None for sigma0 (drawn like train=gaussian's one sigma)."""
        if self.stage1_sigma == "log_uniform":
            low, high = math.log(self.sigma_min), math.log(self.sigma_max)
            return torch.exp(low + (high - low) * torch.rand(rows, device=device))
        if isinstance(self.stage1_sigma, (list, tuple)):
            levels = torch.tensor([float(v) for v in self.stage1_sigma], dtype=torch.float32, device=device)
            return levels[torch.randint(len(levels), (rows,), device=device)]
        return None

    def phase_at(self, epoch: int) -> str:
        """``gaussian`` in stage 1 (epochs [0, stage1_epochs)), ``instance`` in stage 2."""
        return "instance" if epoch >= self.stage1_epochs else "gaussian"

    def sigma_table(self, size: int | None) -> SigmaTable:
        check(size is not None and size >= 1, "num_train", size,
              "the number of training examples (the sigma table's length)")
        if self.update_rule == "probe":
            return ProbeSigmaTable(size, self.sigma0, self.eta, self.sigma_min, self.sigma_max, self.probe_memory,
                                   self.probe_signal)
        return SigmaTable(size, self.sigma0, self.eta, self.sigma_min, self.sigma_max, self.m_update,
                          self.update_every)


PHASE_IDS = {"gaussian": 0, "instance": 1}


class SmoothingClassifier(pl.LightningModule):
    """A base classifier trained for randomized smoothing with ``settings`` (its schedule and its loss).

    Batches are (x, y, idx) with x in [0, 1]. Logs ``train/loss``, ``train/acc`` (on noisy inputs), the loss's
    parts (``train/loss/<part>``, e.g. consistency's KL term), ``train/phase``, ``train/sigma_mean``,
    ``train/epoch_seconds``, and per validation epoch ``val/acc_clean``, ``val/acc_noisy`` (accuracy of
    f(x + sigma e) over ``val_noise_draws`` draws per input; the checkpoint monitor) and ``val/loss``.
    ``config`` (the resolved run configuration, plain containers) and ``dataset_info`` travel inside every
    checkpoint under the key ``insta_rs``, so certification needs nothing else. ``num_train``: the length
    of the sigma table, if the schedule has one (its ``SigmaTableMonitor`` then writes train_sigma.pt to
    ``run_dir``). ``seed``: the run's seed, from which DDP ranks other than 0 draw their own noise.
    """

    def __init__(self, model: nn.Module, num_classes: int, settings: TrainSettings, config: dict | None = None,
                 dataset_info: dict | None = None, num_train: int | None = None, run_dir: str | Path | None = None,
                 seed: int | None = None):
        super().__init__()
        self.model = model
        self.num_classes = num_classes
        self.settings = settings
        self.loss = settings.loss
        self.run_config = config or {}
        self.dataset_info = dataset_info or {}
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.seed = seed
        self.sigma_table = settings.sigma_table(num_train)
        self.train_acc, self.val_acc_clean, self.val_acc_noisy = (
            MulticlassAccuracy(num_classes, average="micro") for _ in range(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    @property
    def phase(self) -> str:
        return self.settings.phase_at(self.current_epoch)

    def configure_callbacks(self):
        return [] if self.sigma_table is None else [SigmaTableMonitor(self.run_dir)]

    def stage1_levels(self, x: torch.Tensor) -> torch.Tensor:
        """Per-row sigma for a training batch outside the ``instance`` phase: the one global sigma, or for a
        list of levels one level drawn uniformly per row; Insta-RS Train's stage1_sigma if it says otherwise."""
        drawn = self.settings.stage1_levels(x.shape[0], x.device)
        return self._draw_levels(x.shape[0], x.device) if drawn is None else drawn.to(x.dtype)

    def _draw_levels(self, rows: int, device) -> torch.Tensor:
        levels = torch.tensor(self.settings.sigma_levels, dtype=torch.float32, device=device)
        if len(levels) == 1:
            return levels.expand(rows).clone()
        return levels[torch.randint(len(levels), (rows,), device=device)]

    def _gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """All ranks' values stacked rank after rank (rank 0 first); the tensor itself without DDP."""
        if self._trainer is None or self.trainer.world_size == 1:
            return tensor
        return self.all_gather(tensor).reshape(-1, *tensor.shape[1:])

    def training_step(self, batch, batch_idx):
        x, y, idx = batch
        table = self.sigma_table if self.phase == "instance" else None
        if table is not None:  # each example at its own sigma, after the table's update (search rule)
            sigma = table.training_sigmas(self.model, x, y, idx, self._gather).to(x.dtype)
        else:
            sigma = self.stage1_levels(x)
        out = self.loss(self.model, x, y, sigma)
        if table is not None:  # the probe rule learns from this forward
            table.observe(out.logits, y, idx, self._gather)
        self.train_acc.update(out.logits, y)
        rows = x.shape[0]
        self.log_dict({"train/loss": out.loss, "train/acc": self.train_acc}, on_step=False, on_epoch=True,
                      prog_bar=True, sync_dist=True, batch_size=rows)
        parts = {f"train/loss/{name}": value.detach() for name, value in out.parts.items()}
        self.log_dict({"train/phase": float(PHASE_IDS[self.phase]), "train/sigma_mean": sigma.mean(), **parts},
                      on_step=False, on_epoch=True, sync_dist=True, batch_size=rows)
        return out.loss

    def validation_step(self, batch, batch_idx):
        x, y, _ = batch
        clean_logits = self.model(x)
        draws = self.settings.val_noise_draws
        repeated = x.repeat_interleave(draws, dim=0)
        sigma = self._draw_levels(repeated.shape[0], x.device).view(-1, *([1] * (x.dim() - 1)))
        noisy_logits = self.model(repeated + sigma * torch.randn_like(repeated))
        y_noisy = y.repeat_interleave(draws)
        self.val_acc_clean.update(clean_logits, y)
        self.val_acc_noisy.update(noisy_logits, y_noisy)
        metrics = {"val/acc_clean": self.val_acc_clean, "val/acc_noisy": self.val_acc_noisy,
                   "val/loss": F.cross_entropy(noisy_logits, y_noisy)}
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

    def on_train_start(self) -> None:
        """Each DDP rank draws its own noise: rank r > 0 reseeds torch from (seed, r, the global step it starts
        at, so a resumed run does not replay its first noise); rank 0 keeps the stream that a single process
        draws. The distributed sampler's shuffle has its own seed, which all ranks share."""
        if self.seed is not None and self.global_rank > 0:
            state = np.random.SeedSequence([self.seed, self.global_rank, self.global_step]).generate_state(1)
            torch.manual_seed(int(state[0]))

    def on_train_epoch_start(self) -> None:
        self._epoch_started = time.perf_counter()
        table = self.sigma_table
        if table is not None and self.phase == "instance" and self.settings.init == "search" and not table.initialised:
            # inside the epoch's time: the first stage-2 epoch pays for it
            self.initialise_table(self.trainer.datamodule.dataset("train"))

    def initialise_table(self, dataset) -> None:
        """train.init=search: set the whole table from ``search_initial_sigmas`` over ``dataset`` (the train
        split without augmentation, in batches of train.batch_size); under DDP every rank computes it and
        takes rank 0's (its draws are rank 0's), so the tables stay identical."""
        from torch.utils.data import DataLoader

        from .sigma_table import init_levels, search_initial_sigmas

        s = self.settings
        device = self.device
        batches = ((x.to(device), y.to(device), idx.to(device))
                   for x, y, idx in DataLoader(dataset, batch_size=s.batch_size, shuffle=False))
        idx, sigma = search_initial_sigmas(self.model, batches, init_levels(s.sigma_min, s.sigma_max, s.init_levels),
                                           s.init_draws)
        if self._trainer is not None and self.trainer.world_size > 1:
            sigma = self.trainer.strategy.broadcast(sigma, src=0)
        self.sigma_table.initialise(idx, sigma)

    def on_train_epoch_end(self) -> None:
        # wall seconds of the epoch's training loop (validation excluded): stage 2's cost against stage 1's;
        # under DDP the slowest rank's, which is the epoch's wall time
        self.log("train/epoch_seconds", time.perf_counter() - self._epoch_started, on_step=False, on_epoch=True,
                 sync_dist=True, reduce_fx="max")

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["insta_rs"] = {"format": 1, "config": self.run_config, "dataset_info": self.dataset_info,
                                  "num_classes": self.num_classes, "rng": rng_states()}
        if self.sigma_table is not None:
            checkpoint["insta_rs"].update(self.sigma_table.state_dict())

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Resume: the sigma table, its update counter and the RNG states (so a resumed run draws the
        noise an uninterrupted one would)."""
        stored = checkpoint.get("insta_rs", {})
        if self.sigma_table is not None:
            try:
                self.sigma_table.load_state_dict(stored)
            except ValueError:
                raise ConfigError("ckpt_path: the checkpoint has no sigma table of this data set's length; resume "
                                  "train=insta_rs only from its own checkpoints") from None
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


# -- a training run, as train.py starts it ----------------------------------------------------------------

RESUME_MUST_MATCH = ("dataset", "model", "train")
RESUME_MAY_DIFFER = ("train.epochs",)


def fit(module: SmoothingClassifier, datamodule, ckpt_path: str | None, config_text: str,
        make_trainer: Callable[[], pl.Trainer]) -> float | None:
    """Fit ``module`` with the trainer ``make_trainer()`` builds. ``ckpt_path`` resumes (``last``: <run
    dir>/checkpoints/last.ckpt) after ``check_resumable``, before anything is built or written, so a refused
    resume prints one line and leaves the run directory as it was; a resumed run keeps the interrupted run's
    CSV metrics. Rank 0 writes ``config_text`` (the resolved config) as config.yaml; the loggers get the
    config. Returns the last ``val/acc_noisy`` (None without validation)."""
    run_dir = module.run_dir
    if ckpt_path == "last":
        ckpt_path = str(run_dir / "checkpoints" / "last.ckpt")
    if ckpt_path is not None:
        check_resumable(ckpt_path, module.run_config, module.num_classes)
    trainer = make_trainer()
    if ckpt_path is not None:
        keep_csv_metrics(trainer.loggers)
    if not trainer.loggers:  # logger=none: Lightning refuses a LearningRateMonitor without a logger to write to
        trainer.callbacks = [c for c in trainer.callbacks if not isinstance(c, pl.callbacks.LearningRateMonitor)]
    if trainer.is_global_zero:
        write_atomic(run_dir / "config.yaml", config_text)
    for logger in trainer.loggers:
        logger.log_hyperparams(module.run_config)
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    metric = trainer.callback_metrics.get("val/acc_noisy")
    if trainer.is_global_zero:
        _announce(trainer, run_dir, metric)
    return None if metric is None else float(metric)


def _announce(trainer: pl.Trainer, run_dir: Path, metric) -> None:
    """The end of training in a few lines: the run folder, the best checkpoint and its score, how to certify."""
    best = getattr(trainer.checkpoint_callback, "best_model_path", "") if trainer.checkpoint_callback else ""
    score = getattr(trainer.checkpoint_callback, "best_model_score", None) if trainer.checkpoint_callback else None
    print(f"trained {trainer.current_epoch} epochs in {run_dir}")
    if best:
        shown = f" (val/acc_noisy {float(score):.4f})" if score is not None else ""
        print(f"best checkpoint: {best}{shown}; last: {run_dir / 'checkpoints' / 'last.ckpt'}")
    elif metric is not None:
        print(f"last val/acc_noisy {float(metric):.4f}")
    print(f"certify with: python certify.py ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}")


OBJECTIVES = ("val/acc_noisy", "val/certified_accuracy")


@dataclass
class ObjectiveSettings:
    """``objective``: the number train.py returns, which a Hydra sweeper optimises (conf/hparams_search); every
    default of the group lives here.

    metric: ``val/acc_noisy`` (what ``fit`` returns: the last validation accuracy under noise) or
    ``val/certified_accuracy``: after training, the fraction of validation inputs that CERTIFY (ALGORITHMS.md 1)
    at ``sigma`` classifies correctly with a radius >= ``radius`` (certified accuracy, ALGORITHMS.md 5), with n0
    selection and n estimation draws per input and failure probability alpha. At one radius, not ACR: ACR
    rewards a few inputs with large radii. Few draws bound the radius: none beyond
    sigma * PhiInv(alpha^(1/n)) can be certified (``warnings``), so the estimate is a lower one for model
    selection, not the final certificate (n = 100,000). sigma: the level to certify at (conf/objective sets it
    to train.sigma, which is sigma0 for train=insta_rs); a model trained across a list of sigmas needs one
    named. max_inputs: certify at most this many validation inputs, evenly spaced (None: all). batch_size:
    noisy images per forward pass. Input i's noise comes from (the run's seed, i), as in certify.py.
    """

    metric: str = "val/acc_noisy"
    radius: float = 0.25
    sigma: Any = None
    n0: int = 64
    n: int = 1000
    alpha: float = 0.001
    max_inputs: int | None = 500
    batch_size: int = 1000

    def __post_init__(self) -> None:
        check(self.metric in OBJECTIVES, "metric", self.metric, f"one of {', '.join(OBJECTIVES)}")
        if self.metric != "val/certified_accuracy":
            return
        check(isinstance(self.sigma, (int, float)) and not isinstance(self.sigma, bool), "sigma", self.sigma,
              "one noise level to certify at (the model was trained across several: name one of them)")
        check_certify_settings(self.sigma, self.n0, self.n, self.alpha)
        check(isinstance(self.radius, (int, float)) and 0 <= self.radius < math.inf, "radius", self.radius,
              "a finite number >= 0 (pixel units)")
        check(self.max_inputs is None or _is_int(self.max_inputs) and self.max_inputs >= 1, "max_inputs",
              self.max_inputs, "an integer >= 1 or null (all validation inputs)")
        check(_is_int(self.batch_size) and self.batch_size >= 1, "batch_size", self.batch_size, "an integer >= 1")

    def warnings(self) -> list[str]:
        """Settings that work but are likely a mistake (the entry point prints them): a radius that n draws
        cannot certify at sigma, so that every input counts as not certified."""
        if self.metric != "val/certified_accuracy":
            return []
        reach = cohen_radius(noise_sigma(self.sigma), clopper_pearson_lower(self.n, self.n, self.alpha))
        if self.radius <= reach:
            return []
        return [f"radius={self.radius} is beyond the largest radius that n={self.n} draws can certify at "
                f"sigma={self.sigma} with alpha={self.alpha} ({reach:.3f}): every input counts as not certified; "
                f"raise n or lower radius"]


def training_objective(settings: ObjectiveSettings, module: SmoothingClassifier, val_metric: float | None, dataset,
                       accelerator: str | None = None) -> float | None:
    """What train.py returns: ``val_metric`` (``fit``'s val/acc_noisy), or for ``val/certified_accuracy`` the
    ``certified_accuracy_at`` of the trained model on ``dataset`` (the validation split), on this rank's GPU
    when ``accelerator`` names one (gpu, cuda or auto) and one is there, else on the CPU."""
    if settings.metric == "val/acc_noisy":
        return val_metric
    on_gpu = str(accelerator) in ("gpu", "cuda", "auto") and torch.cuda.is_available()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if on_gpu else torch.device("cpu")
    value = certified_accuracy_at(module.model, module.num_classes, dataset, settings, module.seed or 0, device)
    if os.environ.get("LOCAL_RANK", "0") == "0":
        shown = len(range(0, len(dataset), _every(len(dataset), settings.max_inputs)))
        print(f"{settings.metric} at radius {settings.radius}: {value:.4f} (CERTIFY at sigma {settings.sigma}, "
              f"n0 {settings.n0}, n {settings.n}, alpha {settings.alpha}, {shown} validation inputs)", flush=True)
    return value


def certified_accuracy_at(model: nn.Module, num_classes: int, dataset, settings: ObjectiveSettings, seed: int = 0,
                          device: torch.device | str = "cpu") -> float:
    """Certified accuracy at ``settings.radius`` (ALGORITHMS.md 5) of the smoothed ``model`` at ``settings.sigma``:
    ``Smooth.certify_batch`` (CERTIFY, ALGORITHMS.md 1: n0, n, alpha) on every k-th item (x, y, idx) of
    ``dataset`` (k = ceil(len / max_inputs)), the noise of item i from ``row_generator(seed, i)``; an input
    counts when its prediction is y and its radius >= the radius (an abstention counts as wrong)."""
    from .analysis import certified_accuracy

    smooth = Smooth(model.to(device), num_classes, batch_size=settings.batch_size, device=device)
    radii, correct = [], []
    picked = list(range(0, len(dataset), _every(len(dataset), settings.max_inputs)))
    for start in range(0, len(picked), 64):  # 64 inputs share forward passes; a row's draws are its own
        items = [dataset[i] for i in picked[start:start + 64]]
        certificates = smooth.certify_batch(torch.stack([x for x, _, _ in items]), settings.sigma, settings.n0,
                                            settings.n, settings.alpha,
                                            [row_generator(seed, idx, device) for _, _, idx in items])
        radii += [c.radius for c in certificates]
        correct += [int(c.predict == y) for c, (_, y, _) in zip(certificates, items)]
    return certified_accuracy(radii, correct, [settings.radius])[float(settings.radius)]


def _every(size: int, at_most: int | None) -> int:
    """The step k that picks at most ``at_most`` of ``size`` items evenly (every k-th); 1 for None."""
    return 1 if at_most is None else max(1, math.ceil(size / at_most))


def keep_csv_metrics(loggers) -> None:
    """Lightning's CSV logger starts metrics.csv afresh on a resumed run; keep the interrupted run's file as
    csv/metrics.before_resume_<k>.csv (k = 1, 2, ...) so no epoch's metrics are lost."""
    if os.environ.get("LOCAL_RANK", "0") != "0":
        return
    for logger in loggers:
        if type(logger).__name__ != "CSVLogger":
            continue
        metrics = Path(logger.log_dir) / "metrics.csv"
        if metrics.is_file():
            k = 1
            while (metrics.parent / f"metrics.before_resume_{k}.csv").exists():
                k += 1
            metrics.rename(metrics.parent / f"metrics.before_resume_{k}.csv")


def check_resumable(ckpt_path: str, config: dict, num_classes: int) -> None:
    """Refuse, in one line naming the first difference, a checkpoint made with another data set, model,
    training schedule or loss or class count (train.epochs may grow: that is how a run is extended)."""
    stored = read_checkpoint(ckpt_path)["insta_rs"]
    if int(stored["num_classes"]) != num_classes:
        raise CheckpointSettingError(f"ckpt_path={ckpt_path}: the checkpoint's model predicts {stored['num_classes']} classes, "
                              f"this run's data set has {num_classes}: resume with the data set it was trained on")
    old, new = ({k: _without(c.get(k), k) for k in RESUME_MUST_MATCH} for c in (stored["config"], config))
    if old != new:
        key = first_difference(old, new)
        raise CheckpointSettingError(f"ckpt_path={ckpt_path}: the checkpoint was trained with {key}={_dotted(old, key)!r}, "
                              f"this run has {key}={_dotted(new, key)!r}; resume with the same settings or start a "
                              f"new run")


def _without(group, name: str):
    """A config group without the keys of RESUME_MAY_DIFFER."""
    skip = {key.split(".", 1)[1] for key in RESUME_MAY_DIFFER if key.split(".", 1)[0] == name}
    return {k: v for k, v in (group or {}).items() if k not in skip} if skip else group


def _dotted(tree, key: str):
    for part in key.split("."):
        tree = tree.get(part) if isinstance(tree, dict) else None
    return tree
