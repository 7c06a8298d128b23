"""Training the sigma selector h_sel for a base run of Insta-RS Train (ALGORITHMS.md 3d, SOUND.md 3d).

The selector maps an input x (pixel units, [0, 1]) to one of K noise levels Sigma = {sigma_1 < ... <
sigma_K}: its class k is the k-th smallest level. At certification time it is smoothed with one fixed
noise level sigma_sel and certified with Cohen's CERTIFY (``insta_rs.search.selector.SelectorSigma``);
it only has to be stable, not right: a poor but confident choice costs radius, never soundness.

Training: targets from the base run's sigma table (``insta_rs.selector_labels``), cross-entropy on inputs
noised at sigma_sel (like Gaussian data augmentation for a base classifier), so that the smoothed
selector is confident and its radius large. The result is a selector file
(``insta_rs.checkpoints.save_selector``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, WeightedRandomSampler

from .checkpoints import SELECTOR_FILE, SELECTOR_FORMAT, TrainedRun, build_selector_network, save_selector
from .errors import DataError, check
from .experts import load_experts
from .losses import noisy_logits, consistency_objective, draw_noise
from .selector_labels import (
    SIGMA_TABLE_FILE,
    TableExamples,
    check_table_fits,
    label_counts,
    level_balance_weights,
    radius_targets,
    reached,
    read_sigma_table,
    selector_radii,
    selector_targets,
)
from .selector_settings import SelectorSettings


class SelectorClassifier(pl.LightningModule):
    """Trains h_sel with cross-entropy on inputs noised at sigma_sel: loss = CE(h_sel(x + sigma_sel e), t),
    with t a level index (``nearest``) or a probability row over levels (``best_radius``); with
    ``consistency`` = lambda > 0, the consistency objective over two noisy copies instead. SGD with momentum
    and a cosine schedule over ``epochs``. Logs ``train/loss`` and ``train/acc`` (argmax agreement with the
    target's argmax). ``meta`` (the selector file's record) goes into Lightning checkpoints under
    ``insta_rs_selector``."""

    def __init__(self, model: nn.Module, sigma: float, lr: float = 0.05, momentum: float = 0.9,
                 weight_decay: float = 5e-4, epochs: int = 10, meta: dict | None = None, consistency: float = 0.0,
                 eta: float = 0.5):
        super().__init__()
        self.model, self.sigma = model, float(sigma)
        self.consistency, self.eta = float(consistency), float(eta)
        self.lr, self.momentum, self.weight_decay, self.epochs = lr, momentum, weight_decay, epochs
        self.meta = meta or {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def training_step(self, batch, batch_idx):
        x, target, _ = batch
        if self.consistency > 0:
            sigma = torch.full((x.shape[0],), self.sigma, dtype=x.dtype, device=x.device)
            copies = noisy_logits(self.model, x, sigma, draw_noise(x, 2))
            loss, logits = consistency_objective(copies, target, self.consistency, self.eta)["loss"], copies[0]
        else:
            logits = self.model(x + self.sigma * torch.randn_like(x))
            loss = F.cross_entropy(logits, target)
        wanted = target if target.dim() == 1 else target.argmax(dim=1)
        acc = (logits.argmax(dim=1) == wanted).float().mean()
        self.log_dict({"train/loss": loss, "train/acc": acc}, on_step=False, on_epoch=True, prog_bar=True,
                      sync_dist=True, batch_size=x.shape[0])
        return loss

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.parameters(), lr=self.lr, momentum=self.momentum,
                                    weight_decay=self.weight_decay)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=self.epochs)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["insta_rs_selector"] = self.meta


def base_targets(base: TrainedRun, settings: SelectorSettings, seed: int, device=None, experts=None):
    """(train split, sigma table, targets): the base run's train split, its sigma table (checked against
    the split) and the selector's targets for it; ``best_radius`` runs the base classifier on ``device``
    (default CPU, put back there afterwards) with draws seeded by ``seed``. With ``experts`` (a
    ``LevelExperts``) the labels are best_radius by the experts on every training input (``whole_split``)."""
    split = base.source.split("train")
    if experts is None:
        table = read_sigma_table(base.run_dir)
        check_table_fits(table, split, base.run_dir / SIGMA_TABLE_FILE)
    else:
        check(settings.label_mode == "best_radius", "label_mode", settings.label_mode,
              "best_radius with experts (nearest rounds a sigma table, which experts do not have)")
        table = whole_split(split)
    generator = torch.Generator(device=device or "cpu").manual_seed(int(seed))
    network = base.model if experts is None else experts
    model = network.to(device or "cpu")
    try:
        if settings.label_mode == "nearest":
            return split, table, selector_targets(settings, table)
        radii = selector_radii(settings, table, split, model, base.num_classes, generator, device)
    finally:
        network.to("cpu")
    if settings.drop_unreached:
        keep = reached(radii)
        if not bool(keep.any()):
            raise DataError("no training input's label is reached at any level (every estimated radius <= 0): "
                            "set selector.drop_unreached=false or check the base classifier")
        table = {key: value[keep] if isinstance(value, torch.Tensor) and value.shape[:1] == keep.shape else value
                 for key, value in table.items()}
        radii = radii[keep]
    return split, table, radius_targets(radii, settings.soft_labels, settings.temperature)


def whole_split(split) -> dict:
    """A table of every example of ``split`` (idx, label), for labels that need no learned sigmas."""
    targets = getattr(split, "targets", None)
    labels = torch.as_tensor(list(targets) if targets is not None else [int(split[i][1]) for i in range(len(split))],
                             dtype=torch.long)
    return {"idx": torch.arange(len(split)), "label": labels, "sigma": torch.full((len(split),), float("nan"))}


def selector_record(base: TrainedRun, settings: SelectorSettings, seed: int, targets: torch.Tensor,
                    experts_sha256: dict | None = None) -> dict:
    """The selector file's record: what certification needs (format, levels, sigma_sel, the data set's
    description, the network, the classifier it belongs to) and how it was trained."""
    return {
        "format": SELECTOR_FORMAT,
        "levels": list(settings.levels),
        "sigma": float(settings.sigma),
        "label_mode": settings.label_mode,
        "settings": dataclasses.asdict(settings),
        "seed": int(seed),
        "base_ckpt": str(base.path.resolve()),
        "base_sha256": base.sha256,
        "experts_sha256": experts_sha256,
        "dataset_info": dataclasses.asdict(base.source.info),
        "network": {"name": "small_cnn", "width": int(settings.width), "hidden": int(settings.hidden),
                    "pool": int(settings.pool)},
        "label_counts": label_counts(targets, len(settings.levels)),  # over the inputs it was trained on
    }


def fit_selector(base: TrainedRun, settings: SelectorSettings, run_dir: str | Path = ".",
                 trainer_kwargs: dict | None = None, seed: int = 0, device=None, experts=None) -> Path:
    """Train a sigma selector for the base classifier of ``base`` and save it; returns the file's path.

    Reads ``train_sigma.pt`` in the base run's directory, computes the targets (``base_targets``), and fits
    ``SelectorClassifier`` with a ``pytorch_lightning.Trainer(max_epochs=settings.epochs, **trainer_kwargs)``
    (defaults: CPU, no logger, no checkpointing, no progress bar; ``trainer_kwargs`` overrides them, e.g.
    with loggers and an accelerator). ``seed`` seeds the label draws; the network's initial weights and the
    batch order come from the global RNGs, so seed them before ``load_run`` for a reproducible selector
    (train.py calls ``pl.seed_everything(seed)`` first). ``experts``: {level: checkpoint}, one base classifier
    per level (``insta_rs.experts``) that labels every training input; the file records their SHA-256. Writes ``run_dir/selector.pt`` (rank 0; see
    ``insta_rs.checkpoints.save_selector``).
    """
    routed, digests = load_experts(experts, base) if experts else (None, None)
    split, table, targets = base_targets(base, settings, seed, device, routed)
    info = base.source.info
    network = build_selector_network(len(settings.levels), info.input_shape, info.mean, info.std, settings.width,
                                     settings.hidden, settings.pool)
    record = selector_record(base, settings, seed, targets, digests)
    module = SelectorClassifier(network, settings.sigma, lr=settings.lr, momentum=settings.momentum,
                                weight_decay=settings.weight_decay, epochs=settings.epochs, meta=record,
                                consistency=settings.consistency, eta=settings.eta)
    examples = TableExamples(split, table["idx"].reshape(-1), targets)
    if settings.balance_levels:
        weights = level_balance_weights(targets, len(settings.levels))
        sampler = WeightedRandomSampler(weights, num_samples=len(examples), replacement=True)
        loader = DataLoader(examples, batch_size=settings.batch_size, sampler=sampler, drop_last=False)
    else:
        loader = DataLoader(examples, batch_size=settings.batch_size, shuffle=True, drop_last=False)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    kwargs = {"accelerator": "cpu", "devices": 1, "logger": False, "enable_checkpointing": False,
              "enable_progress_bar": False, "enable_model_summary": False, "default_root_dir": str(run_dir)}
    kwargs.update(trainer_kwargs or {})
    kwargs["max_epochs"] = settings.epochs
    trainer = pl.Trainer(**kwargs)
    trainer.fit(module, train_dataloaders=loader)
    path = run_dir / SELECTOR_FILE
    if trainer.is_global_zero:
        save_selector(path, module.model, record)
    return path
