"""Certify a trained model: rebuild it from its checkpoint, choose sigma per input, write the TSV.

    python certify.py ckpt_path=outputs/train/.../checkpoints/last.ckpt [certify=fast] [sigma_search=fixed]

Writes certify.tsv (one flushed row per input; ALGORITHMS.md section 6), then summary.json, table.md,
certified_accuracy.png and sigma_hist.png. Rerunning the same command in the same run directory
(hydra.run.dir=...) resumes after the last complete row; the rows are identical either way.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from insta_rs.cli import check_group_choices, user_errors

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


def certify(cfg: DictConfig) -> dict:
    import torch
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import instantiate

    from insta_rs import analysis
    from insta_rs.certificates import ABSTAIN, check_alpha, floor_to
    from insta_rs.checkpoints import file_digest, model_state, read_checkpoint
    from insta_rs.errors import DataError, check
    from insta_rs.search import SearchContext
    from insta_rs.smoothing import Smooth, check_certify_settings, row_generator
    from insta_rs.tracking import CERTIFY_COLUMNS, CertificationLog, log_certification_to_wandb, write_json_atomic, write_text_atomic

    run_dir = Path(HydraConfig.get().runtime.output_dir).resolve()
    c = cfg.certify
    check(c.split in ("test", "val"), "certify.split", c.split, "test or val")
    check(isinstance(c.skip, int) and c.skip >= 1, "certify.skip", c.skip, "an integer >= 1")
    check(c.max is None or (isinstance(c.max, int) and c.max >= 1), "certify.max", c.max, "null or an integer >= 1")
    check_alpha(c.alpha)
    check_certify_settings(1.0, c.n0, c.n, c.alpha)

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

    search_cfg = OmegaConf.to_container(cfg.sigma_search, resolve=True)
    if "sigma" in search_cfg and search_cfg["sigma"] is None:
        search_cfg["sigma"] = trained.train.get("sigma", trained.train.get("sigma0"))
    method = instantiate(search_cfg)
    method.prepare(SearchContext(source=source, num_classes=num_classes, device=device,
                                 trained_config=OmegaConf.to_container(trained, resolve=True),
                                 ckpt_path=str(cfg.ckpt_path)))
    smooth = Smooth(model, num_classes, batch_size=c.batch_size, device=device)

    dataset = source.split(c.split)
    selected = list(range(0, len(dataset), c.skip))
    if c.max is not None:
        selected = selected[: c.max]
    check(len(dataset) > 0, "certify.split", c.split, "a split with at least one input")
    check(c.skip <= max(1, len(dataset)), "certify.skip", c.skip,
          f"at most the split's size ({len(dataset)} inputs); a larger skip selects only input 0")

    settings = {
        "checkpoint_sha256": file_digest(cfg.ckpt_path),
        "dataset": OmegaConf.to_container(dataset_cfg, resolve=True),
        "sigma_search": search_cfg,
        "seed": cfg.seed,
        "n0": c.n0, "n": c.n, "alpha": c.alpha, "batch_size": c.batch_size, "split": c.split, "skip": c.skip,
    }
    tsv_path = run_dir / "certify.tsv"
    started = time.time()
    columns = CERTIFY_COLUMNS + tuple(method.extra_columns)
    with CertificationLog(tsv_path, settings, columns) as log:
        done = set(log.done)
        todo = [i for i in selected if i not in done]
        progress = _progress(len(selected), len(selected) - len(todo), enabled=c.progress)
        correct_so_far = 0
        for idx in todo:
            x, label, _ = dataset[idx]
            row_start = time.time()
            result = method.certify(smooth, x, c.n0, c.n, c.alpha, row_generator(cfg.seed, idx, device))
            elapsed = time.time() - row_start
            correct = int(result.predict == int(label) and result.predict != ABSTAIN)
            log.append({
                "idx": idx, "label": int(label), "predict": result.predict,
                "radius": floor_to(result.radius), "correct": correct, "time": round(elapsed, 4),
                "sigma": result.sigma, "pA_lower": floor_to(result.p_lower), "guarantee": result.guarantee,
                "search_time": round(result.search_time, 4), "search_draws": result.search_draws,
                **result.extra,
            })
            correct_so_far += correct
            if progress is not None:
                progress.update(1)
                progress.set_postfix(cert_acc_r0=f"{correct_so_far / progress.n:.3f}" if progress.n else "n/a")
        if progress is not None:
            progress.close()

    rows = analysis.read_certification(tsv_path)
    rows = rows[rows["idx"].isin(selected)]
    radii = analysis.radius_grid(info.name)
    by_guarantee = analysis.summarize_by_guarantee(rows, radii)
    summary = _summary(rows, by_guarantee, search_cfg, time.time() - started)
    write_json_atomic(run_dir / "summary.json", summary)
    table = analysis.markdown_table({method.name: by_guarantee}, radii)
    write_text_atomic(run_dir / "table.md", table)
    curve = analysis.certified_accuracy_curve(rows)
    analysis.plot_certified_accuracy({f"{method.name} ({g})": analysis.certified_accuracy_curve(rows[rows["guarantee"] == g])
                                      for g in by_guarantee}, run_dir / "certified_accuracy.png",
                                     title=f"{info.name}: certified accuracy")
    sigmas = rows["sigma"].astype(float).tolist()
    analysis.plot_sigma_histogram(sigmas, run_dir / "sigma_hist.png", title=f"{info.name}: sigma per input")
    print(table)
    print(f"wrote {tsv_path} and summary.json, table.md, certified_accuracy.png, sigma_hist.png in {run_dir}")
    wandb_cfg = (cfg.get("logger") or {}).get("wandb")
    if wandb_cfg is not None:
        log_certification_to_wandb(run_dir, summary, curve, sigmas, OmegaConf.to_container(cfg, resolve=True),
                                   mode="offline" if wandb_cfg.get("offline", True) else "online",
                                   project=wandb_cfg.get("project", "insta-rs"), group=wandb_cfg.get("group"))
    return summary


def _summary(rows, by_guarantee: dict, search_cfg: dict, seconds: float) -> dict:
    """summary.json (INTERFACE.md). With one guarantee label the headline numbers are that label's; with
    several they are null and ``by_guarantee`` holds each label's numbers, so nothing is mixed silently."""
    single = next(iter(by_guarantee.values())) if len(by_guarantee) == 1 else None
    headline = {key: (single[key] if single else None)
                for key in ("acr", "certified_accuracy", "clean_accuracy", "abstain_rate", "sigma_quantiles")}
    return {
        **headline,
        "rows": int(len(rows)),
        "guarantee": {label: int(s["rows"]) for label, s in by_guarantee.items()},
        "sigma_search": search_cfg,
        "seconds": round(float(rows["time"].sum() + rows["search_time"].sum()), 3),
        "wall_seconds_this_run": round(seconds, 3),
        "by_guarantee": by_guarantee,
    }


def _progress(total: int, initial: int, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc="certify", unit="input", dynamic_ncols=True)


@hydra.main(config_path="conf", config_name="certify", version_base="1.3")
@user_errors
def main(cfg: DictConfig) -> float:
    try:
        return certify(cfg)["acr"]
    finally:
        import wandb

        if wandb.run is not None:
            wandb.finish()


if __name__ == "__main__":
    check_group_choices(sys.argv[1:], CONF_DIR)
    main()
