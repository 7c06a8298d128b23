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

from insta_rs.cli import check_group_choices, user_errors

CONF_DIR = Path(__file__).resolve().parent / "conf"


def run_directory() -> Path:
    """The Hydra run directory. DDP ranks started by Lightning inherit it through INSTA_RS_RUN_DIR, so every
    rank of one job (also inside a multirun) writes to the same folder."""
    from hydra.core.hydra_config import HydraConfig

    inherited = os.environ.get("INSTA_RS_RUN_DIR")
    if inherited and os.environ.get("LOCAL_RANK", "0") != "0":
        return Path(inherited)
    run_dir = Path(HydraConfig.get().runtime.output_dir).resolve()
    os.environ["INSTA_RS_RUN_DIR"] = str(run_dir)
    return run_dir


def train(cfg: DictConfig) -> float | None:
    import pytorch_lightning as pl
    from hydra.utils import instantiate

    from insta_rs.data import SmoothingDataModule
    from insta_rs.tracking import write_text_atomic
    from insta_rs.training import SmoothingClassifier, TrainSettings

    run_dir = run_directory()
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    settings = TrainSettings.from_dict(OmegaConf.to_container(cfg.train, resolve=True))
    source = instantiate(cfg.dataset)
    info = source.info
    datamodule = SmoothingDataModule(source, batch_size=settings.batch_size, num_workers=cfg.num_workers)
    model = instantiate(cfg.model, num_classes=info.num_classes, input_shape=tuple(info.input_shape),
                        mean=tuple(info.mean), std=tuple(info.std))
    config = OmegaConf.to_container(cfg, resolve=True)
    module = SmoothingClassifier(model, info.num_classes, settings, config=config,
                                 dataset_info=dataclasses.asdict(info))
    loggers = [instantiate(c) for c in (cfg.logger or {}).values()]
    callbacks = [instantiate(c) for c in (cfg.callbacks or {}).values()]
    trainer = instantiate(cfg.trainer, logger=loggers or False, callbacks=callbacks, default_root_dir=str(run_dir))
    if trainer.is_global_zero:
        write_text_atomic(run_dir / "config.yaml", OmegaConf.to_yaml(config))
    for logger in loggers:
        logger.log_hyperparams(config)
    ckpt_path = cfg.ckpt_path
    if ckpt_path == "last":
        ckpt_path = str(run_dir / "checkpoints" / "last.ckpt")
    if ckpt_path is not None:
        from insta_rs.checkpoints import read_checkpoint

        read_checkpoint(ckpt_path)  # a clear error before Lightning's
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    metric = trainer.callback_metrics.get("val/acc_noisy")
    return None if metric is None else float(metric)


@hydra.main(config_path="conf", config_name="train", version_base="1.3")
@user_errors
def main(cfg: DictConfig) -> float | None:
    try:
        return train(cfg)
    finally:
        import wandb

        if wandb.run is not None:
            wandb.finish()


if __name__ == "__main__":
    check_group_choices(sys.argv[1:], CONF_DIR)
    main()
