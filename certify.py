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


@hydra.main(config_path="conf", config_name="certify", version_base="1.3")
@cli.user_errors
def main(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig

    from insta_rs.certification import CertifySettings, run

    hydra_config = HydraConfig.get()
    cli.share_sweep_dir_with_ranks(hydra_config.mode, hydra_config.sweep.dir)
    run_dir = Path(hydra_config.runtime.output_dir).resolve()
    settings = cli.settings(CertifySettings, cfg.certify, "certify")
    trained = cli.trained_run(cfg.ckpt_path, cli.resolved(cfg.get("dataset")))
    spec = cli.method_spec(cfg.sigma_search, trained)
    method = cli.build_group(spec, "sigma_search", _convert_="all")
    # an image that cannot be read is met as certification reads it; the split's size is checked there too
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
    cli.run_hydra(main)
