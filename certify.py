"""Certify a trained model: rebuild it from its checkpoint, choose sigma per input, write the TSV.

    python certify.py ckpt_path=outputs/train/.../checkpoints/last.ckpt [certify=fast] [sigma_search=fixed]

Writes certify.tsv (one flushed row per input; ALGORITHMS.md section 6), then summary.json, table.md,
certified_accuracy.png and sigma_hist.png. Rerunning the same command in the same run directory
(hydra.run.dir=...) resumes after the last complete row; the rows are identical either way.
With trainer=ddp (GPUs) or trainer=ddp_sim (two CPU processes) the inputs are sharded across ranks; the
rows equal a single process's. ``certify.mode=predict`` runs Cohen et al.'s PREDICT at the sigma the method
chooses and writes predict.tsv, summary.json and table.md instead. All the work is
``insta_rs.certification.run``; this file composes the config and hands it the settings.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from insta_rs import cli

CONF_DIR = Path(__file__).resolve().parent / "conf"


HINTS = {"sigma": "certify.py certifies at the checkpoint's train.sigma; another sigma is "
                  "sigma_search=fixed sigma_search.sigma=VALUE"}
"""What ``+KEY=VALUE`` for a key that no config group defines adds to its one-line refusal."""


def prepare(cfg: DictConfig):
    """Everything certify.py can refuse, before anything runs or is written (for every job of a sweep before
    the first: ``cli.CheckBeforeRun``): the settings, the checkpoint with its data, the sigma method."""
    from insta_rs.certification import CertifySettings, select_indices

    settings = cli.settings(CertifySettings, cfg.certify, "certify")
    trained = cli.trained_run(cfg.ckpt_path, cli.resolved(cfg.get("dataset")))
    with cli.group_errors(cfg.certify, "certify"):  # certify.skip past the end of the split
        select_indices(len(trained.source.split(settings.split)), settings.skip, settings.max)
    spec = cli.method_spec(cfg.sigma_search, trained)
    method = cli.build_group(spec, "sigma_search", _convert_="all")
    cli.warn_untrained_levels(spec, trained)
    return settings, trained, spec, method


@hydra.main(config_path="conf", config_name="certify", version_base="1.3")
@cli.user_errors
def main(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig

    from insta_rs.certification import run

    hydra_config = HydraConfig.get()
    cli.share_sweep_dir_with_ranks(hydra_config.mode, hydra_config.sweep.dir)
    run_dir = Path(hydra_config.runtime.output_dir).resolve()
    settings, trained, spec, method = cli.prepared(cfg, prepare)
    # an image that cannot be read is met as certification reads it
    with cli.data_errors(trained.source_spec), cli.group_errors(cfg.certify, "certify"):
        result = run(trained, method, spec, settings, seed=cfg.seed, run_dir=run_dir,
                     make_trainer=cli.certification_trainer(cfg.trainer, run_dir), wandb=cli.wandb_settings(cfg))
    if result is None:  # DDP ranks other than 0
        return None
    return result.summary["accuracy"] if settings.mode == "predict" else result.summary["acr"]


if __name__ == "__main__":
    cli.register_configs()
    cli.check_group_choices(sys.argv[1:], CONF_DIR)
    sys.argv = cli.pinned_sweep_dir(sys.argv)
    cli.run_hydra(main, prepare=prepare, hints=HINTS)
