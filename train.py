"""Train a base classifier for randomized smoothing: compose the config, build the pieces, fit.

    python train.py [dataset=digits] [model=small_cnn] [train=gaussian] [trainer=cpu] [logger=wandb] ...
    python train.py -m train.sigma=0.12,0.25,0.5,1.0      # a Hydra multirun sweep
    python train.py hparams_search=certified_accuracy     # an Optuna search for certified accuracy at a radius

Writes checkpoints/{last,best}.ckpt, config.yaml (resolved), csv/metrics.csv and wandb/ in the run directory.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from insta_rs.cli import settings as cli_settings
from insta_rs.cli import (build_group, check_group_choices, data_errors, pinned_sweep_dir, prepared, register_configs,
                          resolved, run_hydra, share_sweep_dir_with_ranks, training_loggers, user_errors,
                          wandb_run_record)

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


HINTS = {"sigma": "the training noise is train.sigma, one sigma or a list; train=insta_rs starts at train.sigma0"}
"""What ``+KEY=VALUE`` for a key that no config group defines adds to its one-line refusal."""


def prepare(cfg: DictConfig):
    """Everything train.py can refuse, before anything runs or is written (for every job of a sweep before the
    first: ``cli.CheckBeforeRun``): the settings (the train group's _target_, with its loss), the objective, the
    data set, the model (built after seeding, as the run uses it) and the checkpoint to resume; for
    train=selector the selector's settings and its base checkpoint (``prepare_selector``)."""
    import pytorch_lightning as pl
    from hydra.utils import instantiate

    from insta_rs.checkpoints import read_checkpoint
    from insta_rs.training import ObjectiveSettings

    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    if cfg.get("selector") is not None:
        return prepare_selector(cfg)
    settings = build_group(resolved(cfg.train), "train", _convert_="all")
    objective = cli_settings(ObjectiveSettings, cfg.objective, "objective")
    source = build_group(cfg.dataset, "dataset")
    info = source.info
    model = instantiate(cfg.model, num_classes=info.num_classes, input_shape=tuple(info.input_shape),
                        mean=tuple(info.mean), std=tuple(info.std))
    if cfg.ckpt_path not in (None, "last"):  # "last" is in the run folder, checked as the run resumes
        read_checkpoint(cfg.ckpt_path)
    return settings, objective, source, model


def train(cfg: DictConfig) -> float | None:
    """Build the module, loggers, callbacks and trainer from the config and what ``prepare`` built, fit
    (``insta_rs.training.fit``), and return the ``objective`` (``insta_rs.training.training_objective``:
    what a sweeper such as hparams_search optimises)."""
    import warnings

    from hydra.utils import instantiate

    from insta_rs.data import SmoothingDataModule
    from insta_rs.training import SmoothingClassifier, fit, training_objective

    run_dir = run_directory()
    if cfg.get("selector") is not None:  # train=selector: fit a sigma selector for base_ckpt
        return train_selector(cfg, run_dir, *prepared(cfg, prepare))
    settings, objective, source, model = prepared(cfg, prepare)
    info = source.info
    if cfg.ckpt_path is not None:  # a resume writes into its own checkpoints/ folder on purpose
        warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
    config = OmegaConf.to_container(cfg, resolve=True)
    config["wandb_run"] = wandb_run_record(cfg)  # its certifications take up its W&B name and group
    module = SmoothingClassifier(model, info.num_classes, settings, config=config, dataset_info=dataclasses.asdict(info),
                                 num_train=len(source.split("train")), run_dir=run_dir, seed=cfg.seed)
    loggers = training_loggers(cfg)
    callbacks = [instantiate(c) for c in (cfg.callbacks or {}).values()]
    make_trainer = functools.partial(instantiate, cfg.trainer, logger=loggers or False, callbacks=callbacks,
                                     default_root_dir=str(run_dir))
    datamodule = SmoothingDataModule(source, batch_size=settings.batch_size, num_workers=cfg.num_workers)
    with data_errors(cfg.dataset):  # an image that cannot be read is met as training reads it
        val_metric = fit(module, datamodule, cfg.ckpt_path, OmegaConf.to_yaml(config), make_trainer)
        return training_objective(objective, module, val_metric, source.split("val"), cfg.trainer.get("accelerator"))


def prepare_selector(cfg: DictConfig):
    """``train=selector``: the selector's settings and the base checkpoint's path, checked (``prepare``)."""
    from insta_rs.errors import CheckpointSettingError, ConfigError
    from insta_rs.selector_training import SelectorSettings

    if not cfg.get("base_ckpt"):
        raise ConfigError("base_ckpt=null: name the checkpoint of a train=insta_rs run, e.g. "
                          "base_ckpt=outputs/train/<date>/<time>/checkpoints/last.ckpt")
    settings = cli_settings(SelectorSettings, resolved(cfg.selector), "selector")
    base_ckpt = Path(str(cfg.base_ckpt)).expanduser()
    if not base_ckpt.is_file():
        raise CheckpointSettingError(f"base_ckpt={str(base_ckpt)!r} does not exist: give the base run's checkpoint "
                                     "(<run dir>/checkpoints/last.ckpt of a train=insta_rs run)")
    return settings, base_ckpt


def train_selector(cfg: DictConfig, run_dir: Path, settings, base_ckpt: Path) -> None:
    """``train=selector base_ckpt=PATH``: fit the certified sigma selector (ALGORITHMS.md 3d) on the base
    run's train_sigma.pt; writes selector.pt. No checkpoint callbacks: the selector has no validation loop."""
    import pytorch_lightning as pl

    from insta_rs.checkpoints import load_run
    from insta_rs.selector_training import fit_selector
    from insta_rs.certification_file import write_atomic as write_text_atomic

    config = OmegaConf.to_container(cfg, resolve=True)
    write_text_atomic(run_dir / "config.yaml", OmegaConf.to_yaml(config))
    loggers = training_loggers(cfg)
    trainer_kwargs = {k: v for k, v in config["trainer"].items() if k != "_target_"}
    trainer_kwargs.update(logger=loggers or False, default_root_dir=str(run_dir))
    device = "cuda" if str(trainer_kwargs.get("accelerator")) in ("gpu", "cuda") else "cpu"
    pl.seed_everything(cfg.seed, workers=True, verbose=False)  # the selector's initial weights follow the seed
    path = fit_selector(load_run(base_ckpt), settings, run_dir, trainer_kwargs, seed=cfg.seed, device=device,
                        experts=config.get("experts"))
    print(f"wrote {path}")
    return None


@hydra.main(config_path="conf", config_name="train", version_base="1.3")
@user_errors
def main(cfg: DictConfig) -> float | None:
    return train(cfg)


if __name__ == "__main__":
    register_configs()
    check_group_choices(sys.argv[1:], CONF_DIR)
    sys.argv = pinned_sweep_dir(sys.argv)
    run_hydra(main, prepare=prepare, hints=HINTS)
