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
from insta_rs.cli import (build_group, check_group_choices, data_errors, pinned_sweep_dir, register_configs, resolved,
                          run_hydra, share_sweep_dir_with_ranks, training_loggers, user_errors, wandb_run_record)

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


def train(cfg: DictConfig) -> float | None:
    """Build the settings (the train group's _target_, with its loss), the data, the model, the module, the
    loggers, callbacks and trainer from the config, fit (``insta_rs.training.fit``), and return the
    ``objective`` (``insta_rs.training.training_objective``: what a sweeper such as hparams_search optimises)."""
    import pytorch_lightning as pl
    from hydra.utils import instantiate

    from insta_rs.data import SmoothingDataModule
    from insta_rs.training import ObjectiveSettings, SmoothingClassifier, fit, training_objective

    run_dir = run_directory()
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    if cfg.get("selector") is not None:  # train=selector: fit a sigma selector for base_ckpt
        return train_selector(cfg, run_dir)
    settings = build_group(resolved(cfg.train), "train", _convert_="all")
    objective = cli_settings(ObjectiveSettings, cfg.objective, "objective")
    source = build_group(cfg.dataset, "dataset")
    info = source.info
    model = instantiate(cfg.model, num_classes=info.num_classes, input_shape=tuple(info.input_shape),
                        mean=tuple(info.mean), std=tuple(info.std))
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


def train_selector(cfg: DictConfig, run_dir: Path) -> None:
    """``train=selector base_ckpt=PATH``: fit the certified sigma selector (ALGORITHMS.md 3d) on the base
    run's train_sigma.pt; writes selector.pt. No checkpoint callbacks: the selector has no validation loop."""
    import pytorch_lightning as pl

    from insta_rs.checkpoints import load_run
    from insta_rs.errors import CheckpointError, ConfigError
    from insta_rs.selector_training import SelectorSettings, fit_selector
    from insta_rs.certification_file import write_atomic as write_text_atomic

    if not cfg.get("base_ckpt"):
        raise ConfigError("base_ckpt=null: name the checkpoint of a train=insta_rs run, e.g. "
                          "base_ckpt=outputs/train/<date>/<time>/checkpoints/last.ckpt")
    config = OmegaConf.to_container(cfg, resolve=True)
    settings = cli_settings(SelectorSettings, config["selector"], "selector")
    base_ckpt = Path(str(cfg.base_ckpt)).expanduser()
    if not base_ckpt.is_file():
        raise CheckpointError(f"base_ckpt={str(base_ckpt)!r} does not exist: give the base run's checkpoint "
                              "(<run dir>/checkpoints/last.ckpt of a train=insta_rs run)")
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
    run_hydra(main)
