"""A smoothed sigma selector: training it, storing it, and checking what it learned (ALGORITHMS.md 3d, SOUND.md 3d).

The selector is a small network h_sel mapping an input x (pixel units, [0, 1]) to one of K noise levels
Sigma = {sigma_1 < ... < sigma_K}. At certification time it is itself smoothed with one fixed noise level
sigma_sel, g_sel(x) = argmax_k P[h_sel(x + sigma_sel e) = k], and certified with Cohen's CERTIFY; the base
classifier is then certified at the chosen level and the answer's radius is the smaller of the two
(``insta_rs.search.selector.SelectorSigma``). Throughout, *level k* (the selector's class k) is the k-th
smallest level: levels are always kept sorted in increasing order.

The selector only has to be stable, not right: a poor but confident choice costs radius, never soundness
(SOUND.md 3d). Its training targets come from the base run of Insta-RS Train (ALGORITHMS.md 4):

- ``nearest``: each example's learned sigma_i (``train_sigma.pt``) rounded to the nearest level in log
  space, k_i = argmin_k |log sigma_i - log sigma_k| (a tie goes to the smaller level).
- ``best_radius``: each level's estimated radius on that training example with the base classifier f and
  its true label y: with m draws per level, phat_k = #{f(x + sigma_k e) = y} / m and
  Rhat_k = sigma_k * PhiInv(clamp(phat_k, eps, 1 - eps)) (eps = 1 / (2m) unless given), the objective of
  Insta-RS Train's sigma update. Soft targets softmax_k(Rhat_k / temperature), or with ``soft_labels=False``
  the one-hot argmax_k Rhat_k (a tie goes to the smaller level). These track each example's best level,
  which rounding sigma_i does not (it can drift toward large levels and cost clean accuracy).

During training the selector sees its inputs with Gaussian noise at sigma_sel (like Gaussian data
augmentation for a base classifier), so that the smoothed selector is confident and its radius large.

The library builds data sources and base models from a run's resolved config without Hydra: the class named
by ``_target_`` (which must live in ``insta_rs.data`` / ``insta_rs.models``) is called with the other keys.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from scipy.stats import norm
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .certificates import clopper_pearson_lower
from .checkpoints import file_digest, model_state, read_checkpoint
from .errors import CheckpointError, ConfigError, DataError, check, settings_from_config
from .models import SmallCNN
from .smoothing import Smooth

LABEL_MODES = ("nearest", "best_radius")
SELECTOR_FORMAT = 1
SELECTOR_FILE = "selector.pt"
TRAIN_SIGMA_FILE = "train_sigma.pt"


# --------------------------------------------------------------------------------------------------
# Settings


def check_levels(levels, setting: str = "selector.levels") -> tuple[float, ...]:
    """The level set as a sorted tuple of distinct finite numbers > 0; ConfigError otherwise (empty,
    non-positive, repeated, or not numbers)."""
    try:
        values = [float(v) for v in levels] if not isinstance(levels, (str, bytes)) else []
    except (TypeError, ValueError):
        values = []
    shown = list(levels) if hasattr(levels, "__iter__") and not isinstance(levels, (str, bytes)) else levels
    check(len(values) >= 1 and all(math.isfinite(v) and v > 0 for v in values)
          and len(set(values)) == len(values) and not any(isinstance(v, bool) for v in shown or []),
          setting, shown, "a non-empty list of distinct noise levels > 0, e.g. [0.12, 0.25, 0.5, 1.0]")
    return tuple(sorted(values))


def _check_positive(value, setting: str, integer: bool = False) -> None:
    if integer:
        check(isinstance(value, int) and not isinstance(value, bool) and value >= 1, setting, value, "an integer >= 1")
    else:
        check(isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0,
              setting, value, "a finite number > 0")


@dataclass
class SelectorSettings:
    """The ``selector`` config group as plain values (conf/selector/default.yaml); see ``fit_selector``."""

    levels: list[float] = field(default_factory=lambda: [0.12, 0.25, 0.5, 1.0])
    sigma: float = 0.25
    label_mode: str = "best_radius"
    draws: int = 32
    soft_labels: bool = True
    temperature: float = 0.1
    eps: float | None = None
    epochs: int = 10
    lr: float = 0.05
    batch_size: int = 128
    momentum: float = 0.9
    weight_decay: float = 5e-4
    width: int = 16
    hidden: int = 64

    @classmethod
    def from_dict(cls, values: dict) -> "SelectorSettings":
        """Build from the ``selector`` config; an unknown key is a ConfigError naming it."""
        return settings_from_config(cls, values, "selector", "a selector setting")

    def validate(self) -> None:
        self.levels = list(check_levels(self.levels))
        _check_positive(self.sigma, "selector.sigma")
        check(self.label_mode in LABEL_MODES, "selector.label_mode", self.label_mode, " or ".join(LABEL_MODES))
        _check_positive(self.draws, "selector.draws", integer=True)
        check(isinstance(self.soft_labels, bool), "selector.soft_labels", self.soft_labels, "true or false")
        _check_positive(self.temperature, "selector.temperature")
        check(self.eps is None or (isinstance(self.eps, float) and 0 < self.eps < 0.5), "selector.eps", self.eps,
              "null (1 / (2 * draws)) or a number in (0, 0.5)")
        for name in ("epochs", "batch_size", "width", "hidden"):
            _check_positive(getattr(self, name), f"selector.{name}", integer=True)
        _check_positive(self.lr, "selector.lr")
        check(isinstance(self.momentum, (int, float)) and 0 <= self.momentum < 1, "selector.momentum", self.momentum,
              "a number in [0, 1)")
        check(isinstance(self.weight_decay, (int, float)) and self.weight_decay >= 0, "selector.weight_decay",
              self.weight_decay, "a number >= 0")


# --------------------------------------------------------------------------------------------------
# Targets


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
    shape (N, K) -> (N, K) float64. eps defaults to 1 / (2m) (ALGORITHMS.md 4's objective)."""
    levels = torch.tensor(check_levels(levels), dtype=torch.float64)
    eps = 0.5 / draws if eps is None else float(eps)
    phat = (correct_counts.to(torch.float64) / draws).clamp(eps, 1.0 - eps)
    return levels * torch.from_numpy(norm.ppf(phat.numpy()))


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


# --------------------------------------------------------------------------------------------------
# Building pieces of a run from its resolved config, without Hydra


def build_from_target(cfg: dict, module: str, setting: str, **extra):
    """Call the class ``cfg["_target_"]`` (which must live in ``module``) with the other keys of ``cfg`` and
    ``extra`` as keyword arguments: what Hydra's ``instantiate`` does for the run's config."""
    cfg = dict(cfg or {})
    target = cfg.pop("_target_", None)
    check(isinstance(target, str) and target.startswith(module + ".") and target.count(".") == module.count(".") + 1,
          f"{setting}._target_", target, f"a class of {module}, e.g. {module}.<Name>")
    factory = getattr(importlib.import_module(module), target.rsplit(".", 1)[1], None)
    check(callable(factory), f"{setting}._target_", target, f"a class that {module} defines")
    return factory(**cfg, **extra)


def build_data_source(dataset_cfg: dict):
    """The data source of a run's ``dataset`` config (``_target_`` in insta_rs.data, the rest as kwargs)."""
    return build_from_target(dataset_cfg, "insta_rs.data", "dataset")


def load_base_classifier(ckpt_path: str | Path, device=None) -> tuple[nn.Module, dict]:
    """The base classifier of a train.py checkpoint (rebuilt from its ``model`` config with insta_rs.models,
    in eval mode on ``device``) and the checkpoint's ``insta_rs`` entry."""
    checkpoint = read_checkpoint(ckpt_path)
    meta = checkpoint["insta_rs"]
    info = meta.get("dataset_info") or {}
    check(bool(info), "base_ckpt", str(ckpt_path), "a checkpoint that records its dataset_info (written by train.py)")
    model = build_from_target(meta["config"]["model"], "insta_rs.models", "model",
                              num_classes=int(meta["num_classes"]), input_shape=tuple(info["input_shape"]),
                              mean=tuple(info["mean"]), std=tuple(info["std"]))
    model.load_state_dict(model_state(checkpoint))
    return model.to(device or "cpu").eval(), meta


def base_run_dir(base_ckpt_path: str | Path) -> Path:
    """The run directory of a checkpoint: the parent of ``checkpoints/`` (else the checkpoint's folder)."""
    parent = Path(base_ckpt_path).resolve().parent
    return parent.parent if parent.name == "checkpoints" else parent


def read_train_sigma(base_ckpt_path: str | Path) -> dict:
    """``train_sigma.pt`` beside a base checkpoint: {"idx", "sigma", "label", "config"}, checked for shape."""
    path = base_run_dir(base_ckpt_path) / TRAIN_SIGMA_FILE
    if not path.is_file():
        raise CheckpointError(f"base_ckpt={str(base_ckpt_path)!r}: no {TRAIN_SIGMA_FILE} in its run directory "
                              f"{path.parent}: train the base with train=insta_rs (it writes the per-example sigma "
                              "table)")
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


# --------------------------------------------------------------------------------------------------
# The selector network and its training


def build_selector_network(num_levels: int, input_shape, mean, std, width: int = 16, hidden: int = 64) -> nn.Module:
    """h_sel: a SmallCNN (insta_rs.models) with one output per level."""
    return SmallCNN(num_classes=num_levels, input_shape=tuple(input_shape), mean=tuple(mean), std=tuple(std),
                    width=width, hidden=hidden)


class _SelectorData(Dataset):
    """Items (x, target, idx) for the train-split examples ``indices``; target is a level index or a (K,) row."""

    def __init__(self, split, indices: torch.Tensor, targets: torch.Tensor):
        self.split, self.indices, self.targets = split, indices.tolist(), targets

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        x, _, idx = self.split[self.indices[i]]
        return x, self.targets[i], idx


class SelectorClassifier(pl.LightningModule):
    """Trains h_sel with cross-entropy on inputs noised at sigma_sel: loss = CE(h_sel(x + sigma_sel e), t),
    with t a level index (``nearest``) or a probability row over levels (``best_radius``). SGD with momentum
    and a cosine schedule over ``epochs``. Logs ``train/loss`` and ``train/acc`` (argmax agreement with the
    target's argmax). ``meta`` (levels, sigma, label mode, base classifier) goes into Lightning checkpoints
    under ``insta_rs_selector``."""

    def __init__(self, model: nn.Module, sigma: float, lr: float = 0.05, momentum: float = 0.9,
                 weight_decay: float = 5e-4, epochs: int = 10, meta: dict | None = None):
        super().__init__()
        self.model, self.sigma = model, float(sigma)
        self.lr, self.momentum, self.weight_decay, self.epochs = lr, momentum, weight_decay, epochs
        self.meta = meta or {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def training_step(self, batch, batch_idx):
        x, target, _ = batch
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


def selector_targets(label_mode: str, table: dict, levels, *, split=None, base_model: nn.Module | None = None,
                     num_classes: int = 0, draws: int = 32, soft_labels: bool = True, temperature: float = 0.1,
                     eps: float | None = None, generator: torch.Generator | None = None, batch_size: int = 1024,
                     device=None) -> torch.Tensor:
    """Targets for the examples of a sigma table: level indices (``nearest``) or an (N, K) float tensor
    (``best_radius``: soft or one-hot, from the base classifier on split[idx_i] with label_i)."""
    check(label_mode in LABEL_MODES, "selector.label_mode", label_mode, " or ".join(LABEL_MODES))
    if label_mode == "nearest":
        return nearest_level_labels(table["sigma"], levels)
    indices, labels = table["idx"].reshape(-1), table["label"].reshape(-1)
    counts = []
    loader = DataLoader(_SelectorData(split, indices, labels), batch_size=batch_size, shuffle=False)
    for x, y, _ in loader:
        counts.append(true_label_counts(base_model, num_classes, x, y, levels, draws, generator,
                                        batch_size=batch_size, device=device))
    radii = radius_estimates(torch.cat(counts), draws, levels, eps)
    return radius_targets(radii, soft_labels, temperature)


def _check_table_against_split(table: dict, split, path_hint: str) -> None:
    indices = table["idx"].reshape(-1).to(torch.long)
    size = len(split)
    if int(indices.min()) < 0 or int(indices.max()) >= size:
        raise DataError(f"{path_hint}: dataset index {int(indices.max())} is outside the base run's train split "
                        f"({size} items): the sigma table belongs to another data set")
    targets = getattr(split, "targets", None)
    if targets is not None:
        expected = torch.as_tensor(targets, dtype=torch.long)[indices]
        if not torch.equal(expected, table["label"].reshape(-1).to(torch.long)):
            raise DataError(f"{path_hint}: its labels differ from the base run's train split at the same indices: "
                            "the sigma table belongs to another data set or split")


def fit_selector(base_ckpt_path: str | Path, levels, selector_sigma: float, label_mode: str = "best_radius",
                 epochs: int = 10, lr: float = 0.05, batch_size: int = 128, run_dir: str | Path = ".",
                 trainer_kwargs: dict | None = None, seed: int = 0, *, draws: int = 32, soft_labels: bool = True,
                 temperature: float = 0.1, eps: float | None = None, width: int = 16, hidden: int = 64,
                 momentum: float = 0.9, weight_decay: float = 5e-4, label_batch_size: int = 1024,
                 device=None) -> Path:
    """Train a sigma selector for the base classifier ``base_ckpt_path`` and save it; returns the file's path.

    Reads the base checkpoint and ``train_sigma.pt`` in its run directory (the parent of ``checkpoints/``),
    builds the base run's data source from its ``dataset`` config, computes the targets (``label_mode``, see
    the module docstring; ``best_radius`` runs the base classifier on ``device``, default CPU), and fits
    ``SelectorClassifier`` with a ``pytorch_lightning.Trainer(max_epochs=epochs, **trainer_kwargs)``
    (defaults: CPU, no logger, no checkpointing, no progress bar; ``trainer_kwargs`` overrides them, e.g. with
    loggers and an accelerator). Seeds everything with ``seed``. Writes ``run_dir/selector.pt`` (loadable with
    ``weights_only=True``): the weights, the levels, sigma_sel, the label mode and settings, the data set's
    description, and the base classifier it belongs to (path and SHA-256).
    """
    levels = check_levels(levels)
    settings = SelectorSettings(levels=list(levels), sigma=selector_sigma, label_mode=label_mode, draws=draws,
                                soft_labels=soft_labels, temperature=temperature, eps=eps, epochs=epochs, lr=lr,
                                batch_size=batch_size, momentum=momentum, weight_decay=weight_decay, width=width,
                                hidden=hidden)
    settings.validate()
    check(base_ckpt_path is not None and str(base_ckpt_path) not in ("", "???"), "base_ckpt", base_ckpt_path,
          "the base run's checkpoint (<run dir>/checkpoints/last.ckpt of a train=insta_rs run)")
    base_ckpt_path = Path(str(base_ckpt_path)).expanduser()
    if not base_ckpt_path.is_file():
        raise CheckpointError(f"base_ckpt={str(base_ckpt_path)!r} does not exist: give the base run's checkpoint "
                              "(<run dir>/checkpoints/last.ckpt of a train=insta_rs run)")
    table = read_train_sigma(base_ckpt_path)
    pl.seed_everything(seed, workers=True, verbose=False)
    base_model, meta = load_base_classifier(base_ckpt_path, device)
    source = build_data_source(meta["config"]["dataset"])
    info = source.info
    split = source.split("train")
    _check_table_against_split(table, split, str(base_run_dir(base_ckpt_path) / TRAIN_SIGMA_FILE))

    generator = torch.Generator(device=device or "cpu").manual_seed(int(seed))
    targets = selector_targets(label_mode, table, levels, split=split, base_model=base_model,
                               num_classes=int(meta["num_classes"]), draws=draws, soft_labels=soft_labels,
                               temperature=temperature, eps=eps, generator=generator, batch_size=label_batch_size,
                               device=device)
    del base_model
    network = build_selector_network(len(levels), info.input_shape, info.mean, info.std, width, hidden)
    record = {
        "format": SELECTOR_FORMAT,
        "levels": list(levels),
        "sigma": float(selector_sigma),
        "label_mode": label_mode,
        "settings": dataclasses.asdict(settings),
        "seed": int(seed),
        "base_ckpt": str(base_ckpt_path.resolve()),
        "base_sha256": file_digest(base_ckpt_path),
        "dataset_info": dataclasses.asdict(info),
        "network": {"name": "small_cnn", "width": int(width), "hidden": int(hidden)},
        "label_counts": _label_counts(targets, len(levels)),
    }
    module = SelectorClassifier(network, selector_sigma, lr=lr, momentum=momentum, weight_decay=weight_decay,
                                epochs=epochs, meta=record)
    loader = DataLoader(_SelectorData(split, table["idx"].reshape(-1), targets), batch_size=batch_size, shuffle=True,
                        drop_last=False)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    kwargs = {"accelerator": "cpu", "devices": 1, "logger": False, "enable_checkpointing": False,
              "enable_progress_bar": False, "enable_model_summary": False, "default_root_dir": str(run_dir)}
    kwargs.update(trainer_kwargs or {})
    kwargs["max_epochs"] = epochs
    trainer = pl.Trainer(**kwargs)
    trainer.fit(module, train_dataloaders=loader)
    path = run_dir / SELECTOR_FILE
    if trainer.is_global_zero:
        save_selector(path, module.model, record)
    return path


def save_selector(path: str | Path, model: nn.Module, record: dict) -> None:
    """Write a selector file: {"insta_rs_selector": record, "state_dict": weights on CPU} (plain types and
    tensors only, so ``load_selector`` reads it with ``weights_only=True``), through a temporary file."""
    path = Path(path)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"insta_rs_selector": record, "state_dict": state}, tmp)
    tmp.replace(path)


def fit_selector_from_config(base_ckpt_path, selector_cfg: dict, run_dir, trainer_kwargs: dict | None = None,
                             seed: int = 0, device=None) -> Path:
    """``fit_selector`` with the ``selector`` config group (conf/selector/default.yaml) as a plain dict."""
    s = SelectorSettings.from_dict(dict(selector_cfg))
    return fit_selector(base_ckpt_path, s.levels, s.sigma, s.label_mode, s.epochs, s.lr, s.batch_size, run_dir,
                        trainer_kwargs, seed, draws=s.draws, soft_labels=s.soft_labels, temperature=s.temperature,
                        eps=s.eps, width=s.width, hidden=s.hidden, momentum=s.momentum,
                        weight_decay=s.weight_decay, device=device)


def _label_counts(targets: torch.Tensor, k: int) -> list[int]:
    hard = targets if targets.dim() == 1 else targets.argmax(dim=1)
    return torch.bincount(hard, minlength=k).tolist()


def load_selector(path: str | Path, device=None) -> tuple[nn.Module, dict]:
    """The selector network (eval mode, on ``device``) and its record from ``selector.pt`` (read with
    ``weights_only=True``). CheckpointError when missing or not a selector file."""
    path = Path(str(path)).expanduser()
    if not path.is_file():
        raise CheckpointError(f"sigma_search.ckpt_path={str(path)!r} does not exist: give the selector.pt written by "
                              "python train.py train=selector base_ckpt=PATH")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise CheckpointError(f"sigma_search.ckpt_path={str(path)!r} cannot be read as a selector "
                              f"({' '.join(str(error).split())[:160]}); train one with train=selector") from error
    record = payload.get("insta_rs_selector") if isinstance(payload, dict) else None
    if not isinstance(record, dict) or record.get("format") != SELECTOR_FORMAT or "state_dict" not in payload:
        raise CheckpointError(f"sigma_search.ckpt_path={str(path)!r} is not a selector written by train=selector "
                              f"(format {SELECTOR_FORMAT}); give its selector.pt")
    info, network = record["dataset_info"], record["network"]
    model = build_selector_network(len(record["levels"]), info["input_shape"], info["mean"], info["std"],
                                   network["width"], network["hidden"])
    model.load_state_dict(payload["state_dict"])
    return model.to(device or "cpu").eval(), record


# --------------------------------------------------------------------------------------------------
# Distillation check


def instance_radius_estimates(base_model: nn.Module, num_classes: int, xs: torch.Tensor, levels, draws: int = 256,
                              alpha: float = 0.05, generator: torch.Generator | None = None, batch_size: int = 1000,
                              device=None) -> np.ndarray:
    """The objective of the ``instance`` search (ALGORITHMS.md 2) at every level, without labels:
    Rhat_k = sigma_k * PhiInv(CP lower bound of n_A / m at ``alpha``) with A the top class of the m draws;
    -inf where that bound is < 1/2. Returns an (N, K) float64 array."""
    levels = check_levels(levels)
    smooth = Smooth(base_model, num_classes, batch_size=batch_size, device=device)
    rows = xs.repeat_interleave(len(levels), dim=0)
    sigma = torch.tensor(levels, dtype=torch.float32).repeat(xs.shape[0])
    top = smooth.sample_counts(rows, sigma, draws, generator).max(dim=1).values.cpu().tolist()
    out = np.full(len(top), -np.inf)
    for i, count in enumerate(top):
        lower = clopper_pearson_lower(int(count), draws, alpha)
        if lower >= 0.5:
            out[i] = float(sigma[i]) * norm.ppf(lower)
    return out.reshape(xs.shape[0], len(levels))


def distillation_check(selector_model: nn.Module, selector_sigma: float, levels, base_model: nn.Module,
                       num_classes: int, xs: torch.Tensor, *, selector_draws: int = 256, search_draws: int = 256,
                       search_alpha: float = 0.05, seed: int = 0, batch_size: int = 1000, device=None) -> dict:
    """How well the smoothed selector reproduces the per-input best level (its ceiling; SOUND.md 3d).

    For each input: the selector's level = argmax of h_sel's counts over ``selector_draws`` draws at
    sigma_sel (a Monte Carlo estimate of g_sel, not certified); the best level = argmax_k of the ``instance``
    objective (``instance_radius_estimates``: the instance search restricted to the levels). The cost of an
    input is max(Rhat_best, 0) - max(Rhat_selected, 0) (0 when they agree). Returns
    {"inputs", "agreement" (fraction where the levels agree or their estimated radii are equal),
    "mean_cost" (over all inputs),
    "mismatch_mean_cost" (over disagreeing inputs; NaN if none), "no_level_certifies" (inputs where every
    Rhat is -inf), "per_level": a DataFrame with, per level, how often each rule picks it and the agreement
    among inputs whose best level it is}.
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
    base_model, meta = load_base_classifier(base_ckpt_path, device)
    dataset = build_data_source(meta["config"]["dataset"]).split(split)
    count = min(len(dataset), int(max_inputs))
    xs = torch.stack([dataset[i][0] for i in range(count)])
    return distillation_check(selector_model, record["sigma"], record["levels"], base_model, int(meta["num_classes"]),
                              xs, **kwargs)
