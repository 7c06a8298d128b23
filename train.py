"""Train a base classifier for randomized smoothing: compose the config, build the pieces, fit.

    python train.py [dataset=digits] [model=small_cnn] [train=gaussian] [trainer=cpu] [logger=wandb] ...
    python train.py -m train.sigma=0.12,0.25,0.5,1.0      # a Hydra multirun sweep

Writes checkpoints/{last,best}.ckpt, config.yaml (resolved), csv/metrics.csv and wandb/ in the run directory.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from insta_rs.cli import check_group_choices, pinned_sweep_dir, share_sweep_dir_with_ranks, user_errors

CONF_DIR = Path(__file__).resolve().parent / "conf"


def run_directory() -> Path:
    """The Hydra run directory, exported as INSTA_RS_RUN_DIR for the configs (checkpoints, loggers). DDP
    ranks started by Lightning get the same directory: Lightning passes rank 0's hydra.run.dir to a single
    run's children, and in a multirun ``pinned_sweep_dir`` gives them rank 0's sweep directory, whose job
    folders they then share job by job."""
    from hydra.core.hydra_config import HydraConfig

    config = HydraConfig.get()
    share_sweep_dir_with_ranks(config.mode, config.sweep.dir)
    run_dir = Path(config.runtime.output_dir).resolve()
    os.environ["INSTA_RS_RUN_DIR"] = str(run_dir)
    return run_dir


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


RESUME_MUST_MATCH = ("dataset", "model", "train")
RESUME_MAY_DIFFER = ("train.epochs",)


def check_resumable(ckpt_path: str, config: dict, num_classes: int) -> None:
    """Refuse, in one line naming the first difference, a checkpoint made with another data set, model,
    training method or class count (train.epochs may grow: that is how a run is extended)."""
    from insta_rs.checkpoints import read_checkpoint
    from insta_rs.errors import CheckpointError
    from insta_rs.tracking import first_difference

    checkpoint = read_checkpoint(ckpt_path)
    stored = checkpoint["insta_rs"]
    if int(stored["num_classes"]) != num_classes:
        raise CheckpointError(f"ckpt_path={ckpt_path}: the checkpoint's model predicts {stored['num_classes']} classes, "
                              f"this run's data set has {num_classes}: resume with the data set it was trained on")
    old = {k: stored["config"].get(k) for k in RESUME_MUST_MATCH}
    new = {k: config.get(k) for k in RESUME_MUST_MATCH}
    for key in RESUME_MAY_DIFFER:
        group, name = key.split(".")
        old[group] = {k: v for k, v in (old[group] or {}).items() if k != name}
        new[group] = {k: v for k, v in (new[group] or {}).items() if k != name}
    if old != new:
        key = first_difference(old, new)
        lookup = lambda d: _dotted(d, key)  # noqa: E731
        raise CheckpointError(f"ckpt_path={ckpt_path}: the checkpoint was trained with {key}={lookup(old)!r}, this "
                              f"run has {key}={lookup(new)!r}; resume with the same settings or start a new run")


def _dotted(tree, key: str):
    for part in key.split("."):
        tree = tree.get(part) if isinstance(tree, dict) else None
    return tree


def train(cfg: DictConfig) -> float | None:
    import pytorch_lightning as pl
    from hydra.utils import instantiate

    from insta_rs.data import SmoothingDataModule
    from insta_rs.tracking import write_text_atomic
    from insta_rs.training import SmoothingClassifier, TrainSettings

    run_dir = run_directory()
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    if cfg.train.get("method") == "selector":
        return train_selector(cfg, run_dir)
    settings = TrainSettings.from_dict(OmegaConf.to_container(cfg.train, resolve=True))
    source = instantiate(cfg.dataset)
    info = source.info
    datamodule = SmoothingDataModule(source, batch_size=settings.batch_size, num_workers=cfg.num_workers)
    model = instantiate(cfg.model, num_classes=info.num_classes, input_shape=tuple(info.input_shape),
                        mean=tuple(info.mean), std=tuple(info.std))
    config = OmegaConf.to_container(cfg, resolve=True)
    ckpt_path = cfg.ckpt_path
    if ckpt_path == "last":
        ckpt_path = str(run_dir / "checkpoints" / "last.ckpt")
    if ckpt_path is not None:  # before anything is written: a refused resume leaves the run directory as it was
        check_resumable(ckpt_path, config, info.num_classes)
    num_train = len(source.split("train")) if settings.method == "insta_rs" else None
    module = SmoothingClassifier(model, info.num_classes, settings, config=config,
                                 dataset_info=dataclasses.asdict(info), num_train=num_train, run_dir=run_dir)
    loggers = [instantiate(c) for c in (cfg.logger or {}).values()]
    if ckpt_path is not None:
        keep_csv_metrics(loggers)
    callbacks = [instantiate(c) for c in (cfg.callbacks or {}).values()]
    if not loggers:  # logger=none: Lightning refuses a LearningRateMonitor without a logger to write to
        callbacks = [c for c in callbacks if not isinstance(c, pl.callbacks.LearningRateMonitor)]
    trainer = instantiate(cfg.trainer, logger=loggers or False, callbacks=callbacks, default_root_dir=str(run_dir))
    if trainer.is_global_zero:
        write_text_atomic(run_dir / "config.yaml", OmegaConf.to_yaml(config))
    for logger in loggers:
        logger.log_hyperparams(config)
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    metric = trainer.callback_metrics.get("val/acc_noisy")
    return None if metric is None else float(metric)


def train_selector(cfg: DictConfig, run_dir: Path) -> None:
    """``train=selector base_ckpt=PATH``: fit the certified sigma selector (ALGORITHMS.md 3d) on the base
    run's train_sigma.pt; writes selector.pt. No checkpoint callbacks: the selector has no validation loop."""
    from hydra.utils import instantiate

    from insta_rs.errors import ConfigError
    from insta_rs.selector import fit_selector_from_config
    from insta_rs.tracking import write_text_atomic

    if not cfg.get("base_ckpt"):
        raise ConfigError("base_ckpt=null: name the checkpoint of a train=insta_rs run, e.g. "
                          "base_ckpt=outputs/train/<date>/<time>/checkpoints/last.ckpt")
    config = OmegaConf.to_container(cfg, resolve=True)
    write_text_atomic(run_dir / "config.yaml", OmegaConf.to_yaml(config))
    loggers = [instantiate(c) for c in (cfg.logger or {}).values()]
    trainer_kwargs = {k: v for k, v in config["trainer"].items() if k != "_target_"}
    trainer_kwargs.update(logger=loggers or False, default_root_dir=str(run_dir))
    device = "cuda" if str(trainer_kwargs.get("accelerator")) in ("gpu", "cuda") else "cpu"
    path = fit_selector_from_config(cfg.base_ckpt, config["selector"], run_dir, trainer_kwargs, seed=cfg.seed,
                                    device=device)
    print(f"wrote {path}")
    return None


@hydra.main(config_path="conf", config_name="train", version_base="1.3")
@user_errors
def main(cfg: DictConfig) -> float | None:
    return train(cfg)


if __name__ == "__main__":
    check_group_choices(sys.argv[1:], CONF_DIR)
    sys.argv = pinned_sweep_dir(sys.argv)
    main()
