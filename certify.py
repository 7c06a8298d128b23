"""Certify a trained model: rebuild it from its checkpoint, choose sigma per input, write the TSV.

    python certify.py ckpt_path=outputs/train/.../checkpoints/last.ckpt [certify=fast] [sigma_search=fixed]

Writes certify.tsv (one flushed row per input; ALGORITHMS.md section 6), then summary.json, table.md,
certified_accuracy.png and sigma_hist.png. Rerunning the same command in the same run directory
(hydra.run.dir=...) resumes after the last complete row; the rows are identical either way.

With trainer=ddp (GPUs) or trainer=ddp_sim (two CPU processes) the inputs are sharded across ranks
through trainer.predict (insta_rs/distributed.py): each rank writes shards/rank<r>.tsv, rank 0 merges them
into certify.tsv in index order. The rows equal a single process's; a rerun with any world size resumes.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from insta_rs.cli import check_group_choices, pinned_sweep_dir, share_sweep_dir_with_ranks, user_errors

CONF_DIR = Path(__file__).resolve().parent / "conf"


def device_for(trainer_cfg: DictConfig):
    """The torch device named by the trainer config (accelerator cpu | gpu | cuda | auto)."""
    import torch

    from insta_rs.errors import ConfigError

    accelerator = str(trainer_cfg.get("accelerator", "cpu"))
    if accelerator == "auto":
        accelerator = "gpu" if torch.cuda.is_available() else "cpu"
    if accelerator in ("gpu", "cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"trainer.accelerator={accelerator!r} but no CUDA device is visible: use trainer=cpu")
        return torch.device("cuda")
    if accelerator == "cpu":
        return torch.device("cpu")
    raise ConfigError(f"trainer.accelerator={accelerator!r} is not supported for certification: expected cpu, gpu or auto")


def is_distributed(trainer_cfg: DictConfig) -> bool:
    """True for a DDP trainer config (conf/trainer/ddp.yaml, ddp_sim.yaml): certify through trainer.predict."""
    return str(trainer_cfg.get("strategy", "auto")).startswith("ddp") or int(trainer_cfg.get("num_nodes", 1)) > 1


def _predict_trainer(cfg: DictConfig, callbacks, run_dir: Path):
    """The Lightning Trainer of conf/trainer for sharded certification: our ShardSampler instead of
    Lightning's (which would pad by repeating inputs), no logger, no checkpoints, no BatchNorm syncing;
    Lightning's progress bar counts rank 0's batches."""
    from hydra.utils import instantiate

    return instantiate(cfg.trainer, logger=False, callbacks=callbacks, use_distributed_sampler=False,
                       enable_checkpointing=False, enable_model_summary=False, sync_batchnorm=False,
                       enable_progress_bar=bool(cfg.certify.progress), default_root_dir=str(run_dir))


def load_model(cfg: DictConfig):
    """The checkpoint's model on its device, the data source to certify on, the trained config and class count."""
    from hydra.utils import instantiate

    from insta_rs.checkpoints import model_state, read_checkpoint
    from insta_rs.errors import DataError

    checkpoint = read_checkpoint(cfg.ckpt_path)
    trained = OmegaConf.create(checkpoint["insta_rs"]["config"])
    num_classes = int(checkpoint["insta_rs"]["num_classes"])
    dataset_cfg = cfg.dataset if cfg.get("dataset") is not None else trained.dataset
    source = instantiate(dataset_cfg)
    info = source.info
    if info.num_classes != num_classes:
        raise DataError(f"dataset={info.name!r} has {info.num_classes} classes but the checkpoint's model predicts "
                        f"{num_classes}: certify with the data set the model was trained on")
    model = instantiate(trained.model, num_classes=num_classes, input_shape=tuple(info.input_shape),
                        mean=tuple(info.mean), std=tuple(info.std))
    model.load_state_dict(model_state(checkpoint))
    device = device_for(cfg.trainer)
    model.to(device).eval()
    return model, source, dataset_cfg, trained, num_classes, device


def certify(cfg: DictConfig) -> dict:
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import instantiate

    from insta_rs import distributed
    from insta_rs.certification import Certifier, certify_split, check_selection, select_indices, write_reports
    from insta_rs.checkpoints import file_digest
    from insta_rs.errors import check
    from insta_rs.search import SearchContext
    from insta_rs.smoothing import Smooth
    from insta_rs.tracking import CertificationLog, log_certification_to_wandb

    run_dir = Path(HydraConfig.get().runtime.output_dir).resolve()
    hydra_config = HydraConfig.get()
    share_sweep_dir_with_ranks(hydra_config.mode, hydra_config.sweep.dir)
    c = cfg.certify
    check_selection(c.split, c.skip, c.max)
    check(c.get("consistency", "none") in ("none", "memory"), "certify.consistency", c.get("consistency"), "none or memory")
    model, source, dataset_cfg, trained, num_classes, device = load_model(cfg)

    search_cfg = OmegaConf.to_container(cfg.sigma_search, resolve=True)
    if "sigma" in search_cfg and search_cfg["sigma"] is None:
        trained_sigma = trained.train.get("sigma", trained.train.get("sigma0"))
        check(isinstance(trained_sigma, (int, float)), "sigma_search.sigma", None,
              f"a number: the checkpoint was trained with train.sigma={trained_sigma}, so name the sigma to certify at")
        search_cfg["sigma"] = trained_sigma
    method = instantiate(search_cfg, _convert_="all")
    smooth = Smooth(model, num_classes, batch_size=c.batch_size, device=device, autocast_dtype=c.get("autocast"),
                    channels_last=bool(c.get("channels_last", False)), compile=bool(c.get("compile", False)))
    certifier = Certifier(smooth, method, c.n0, c.n, c.alpha, cfg.seed)
    method.prepare(SearchContext(source=source, num_classes=num_classes, device=device,
                                 trained_config=OmegaConf.to_container(trained, resolve=True),
                                 ckpt_path=str(cfg.ckpt_path)))

    dataset = source.split(c.split)
    selected = select_indices(len(dataset), c.skip, c.max)
    settings = {
        "checkpoint_sha256": file_digest(cfg.ckpt_path),
        "dataset": OmegaConf.to_container(dataset_cfg, resolve=True),
        "sigma_search": search_cfg,
        "seed": cfg.seed,
        "n0": c.n0, "n": c.n, "alpha": c.alpha, "split": c.split, "skip": c.skip,
        "autocast": c.get("autocast"),
        # the other speed options can change a model's last bits, so a resume must keep them; recorded only
        # when on, so runs made before these keys existed still resume
        **{key: True for key in ("channels_last", "compile") if c.get(key, False)},
    }
    tsv_path = run_dir / "certify.tsv"
    started = time.time()
    if is_distributed(cfg.trainer):
        # shards across ranks (insta_rs/distributed.py); only rank 0 goes on to the reports
        if not distributed.certify_sharded(certifier, dataset, selected, tsv_path, settings,
                                           lambda callbacks: _predict_trainer(cfg, callbacks, run_dir)):
            return None
    else:
        # rows left in shards by an earlier distributed run count as done, and are merged afterwards
        shards = distributed.shard_paths(run_dir)
        in_shards = distributed.done_indices(tsv_path, settings, certifier.columns) if shards else set()
        with CertificationLog(tsv_path, settings, certifier.columns) as log:
            done = set(log.done) | in_shards
            progress = _progress(len(selected), len(done & set(selected)), enabled=c.progress)
            certify_split(certifier, dataset, [i for i in selected if i not in in_shards], log, on_row=progress)
        if shards:
            distributed.merge_shards(tsv_path, settings, certifier.columns, selected)

    tsv_paths = {method.name: tsv_path}
    extra = {}
    if c.get("consistency", "none") == "memory":
        tsv_paths["memory"], extra["memory_changed_rows"] = _memory_pass(run_dir, tsv_path, dataset, selected, settings)
    summary, table, sigmas = write_reports(run_dir, tsv_paths, selected, source.info.name, method.name, search_cfg,
                                           time.time() - started, extra)
    print(table)
    if "memory_changed_rows" in extra:
        print(f"memory pass: changed {extra['memory_changed_rows']} of {len(selected)} rows (certify_memory.tsv)")
    print(f"wrote {tsv_path.name}, summary.json, table.md, certified_accuracy.png, sigma_hist.png in {run_dir}")
    wandb_cfg = (cfg.get("logger") or {}).get("wandb")
    if wandb_cfg is not None:
        from insta_rs import analysis

        rows = analysis.read_certification(tsv_path)
        curve = analysis.certified_accuracy_curve(rows[rows["idx"].isin(selected)])
        log_certification_to_wandb(run_dir, summary, curve, sigmas, OmegaConf.to_container(cfg, resolve=True),
                                   mode="offline" if wandb_cfg.get("offline", True) else "online",
                                   project=wandb_cfg.get("project", "insta-rs"), group=wandb_cfg.get("group"))
    return summary


def _memory_pass(run_dir: Path, tsv_path: Path, dataset, selected, settings: dict):
    """ALGORITHMS.md 3b over the finished rows in index order: a second TSV labelled ``memory``."""
    from insta_rs import analysis
    from insta_rs.certificates.memory import memory_consistency
    from insta_rs.certification import flat_inputs
    from insta_rs.tracking import CertificationLog

    rows = analysis.read_certification(tsv_path)
    rows = rows[rows["idx"].isin(selected)].sort_values("idx")
    predicts, radii, changed = memory_consistency(flat_inputs(dataset, rows["idx"].tolist()),
                                                  rows["predict"].to_numpy(), rows["radius"].to_numpy())
    out = run_dir / "certify_memory.tsv"
    out.unlink(missing_ok=True)
    out.with_name(out.stem + ".settings.json").unlink(missing_ok=True)
    columns = [c for c in rows.columns]
    with CertificationLog(out, {**settings, "consistency": "memory"}, columns) as log:
        for (_, row), predict, radius in zip(rows.iterrows(), predicts, radii):
            record = row.to_dict()
            record.update(predict=int(predict), radius=float(radius), guarantee="memory",
                          correct=int(int(predict) == int(row["label"]) and int(predict) >= 0))
            log.append(record)
    return out, int(changed.sum())


def _progress(total: int, initial: int, enabled: bool):
    """A callable advancing a tqdm bar (inputs done, running certified accuracy at radius 0, ETA), or None."""
    if not enabled:
        return None
    from tqdm import tqdm

    bar = tqdm(total=total, initial=initial, desc="certify", unit="input", dynamic_ncols=True)
    state = {"correct": 0, "rows": 0}

    def advance(row: dict) -> None:
        state["correct"] += row["correct"]
        state["rows"] += 1
        bar.update(1)
        bar.set_postfix(cert_acc_r0=f"{state['correct'] / state['rows']:.3f}")
        if bar.n >= total:
            bar.close()

    return advance


@hydra.main(config_path="conf", config_name="certify", version_base="1.3")
@user_errors
def main(cfg: DictConfig) -> float | None:
    summary = certify(cfg)
    return None if summary is None else summary["acr"]  # None on DDP ranks other than 0


if __name__ == "__main__":
    check_group_choices(sys.argv[1:], CONF_DIR)
    sys.argv = pinned_sweep_dir(sys.argv)
    main()
