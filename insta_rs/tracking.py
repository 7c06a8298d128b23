"""Experiment tracking on W&B: training runs log through ``WandbLogger`` (Lightning's, with a readable run
name, a run id kept in the run folder so a resumed training continues its W&B run, and checkpoints as an
artifact behind a switch); certification runs through ``log_certification_to_wandb``.

Named ``tracking`` so it does not shadow the standard library's ``logging``. The certification file itself
is insta_rs.certification_file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from pytorch_lightning.loggers import WandbLogger as _LightningWandbLogger
from pytorch_lightning.utilities.rank_zero import rank_zero_only

RUN_ID_FILE = "wandb_id.txt"  # in the training run folder: the W&B run that a resumed training continues


def training_run_name(dataset: str | None, model: str | None, schedule: str | None, sigma,
                      loss: str | None = None, experiment: str | None = None, seed: int | None = None) -> str:
    """The W&B name of a training run from the settings that tell runs apart: ``<dataset>-<model>-<schedule>
    [-<loss>]-sigma<sigma>[-seed<k>]``, with ``<experiment>/`` in front when an experiment config set one;
    ``loss`` only when it is not plain Gaussian augmentation, the seed only when it is not 0, a list of sigmas
    joined by ``_`` (``digits-small_cnn-gaussian-sigma0.12_0.25_0.5``)."""
    levels = sigma if isinstance(sigma, (list, tuple)) else [sigma]
    parts = [dataset, model, schedule, loss if loss not in (None, "gaussian") else None]
    if sigma is not None:
        parts.append("sigma" + "_".join(f"{float(s):g}" for s in levels))
    if seed not in (None, 0):
        parts.append(f"seed{seed}")
    name = "-".join(str(p) for p in parts if p not in (None, ""))
    return f"{experiment}/{name}" if experiment else name


def continued_run_id(run_dir: str | Path, resume: bool) -> str | None:
    """The W&B run id a training run in ``run_dir`` uses: the one in ``run_dir/wandb_id.txt`` when it resumes
    (``resume``) and the file exists, else None (W&B draws a new one, which ``WandbLogger`` then writes there)."""
    path = Path(run_dir) / RUN_ID_FILE
    if resume and path.is_file():
        return path.read_text(encoding="utf-8").strip() or None
    return None


class WandbLogger(_LightningWandbLogger):
    """Lightning's WandbLogger as train.py uses it (conf/logger/wandb.yaml), with three differences:

    - ``resume``: true when the run resumes a checkpoint (train.py passes ``ckpt_path is not None``); the run
      then continues the W&B run whose id ``run_dir/wandb_id.txt`` holds (``id=..., resume="allow"``), so its
      curves are not split; a new run writes its id there (rank 0, when its W&B run starts);
    - ``log_checkpoints``: at the end of a successful fit, the best and the last checkpoint are logged as one
      artifact of type ``model`` (``model-<run id>``). Off by default: checkpoints can be large. Unlike
      Lightning's ``log_model`` it works offline (the artifact is uploaded by ``wandb sync``);
    - no ``anonymous`` setting reaches ``wandb.init`` (W&B warns that it has no effect).

    ``save_dir`` is the training run folder (W&B writes under ``save_dir/wandb``)."""

    def __init__(self, save_dir: str | Path = ".", resume: bool = False, log_checkpoints: bool = False,
                 id: str | None = None, **kwargs):
        self._run_dir = Path(save_dir)
        super().__init__(save_dir=save_dir, id=id or continued_run_id(save_dir, resume), **kwargs)
        self._wandb_init.pop("anonymous", None)
        self._log_checkpoints = bool(log_checkpoints)
        self._saved_by: dict[int, object] = {}

    @property
    def experiment(self):
        run = super().experiment
        if rank_zero_only.rank == 0 and self._experiment is not None and not getattr(self, "_id_written", False):
            path = self._run_dir / RUN_ID_FILE
            if not path.is_file() or path.read_text(encoding="utf-8").strip() != run.id:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(run.id + "\n", encoding="utf-8")
            self._id_written = True
        return run

    def after_save_checkpoint(self, checkpoint_callback) -> None:
        super().after_save_checkpoint(checkpoint_callback)
        self._saved_by[id(checkpoint_callback)] = checkpoint_callback

    @rank_zero_only
    def finalize(self, status: str) -> None:
        super().finalize(status)
        if status == "success" and self._log_checkpoints and self._experiment is not None:
            paths = [getattr(c, key, "") for c in self._saved_by.values()
                     for key in ("best_model_path", "last_model_path")]
            log_checkpoint_artifact(self._experiment, paths)


def log_checkpoint_artifact(run, paths: Sequence[str | Path]) -> None:
    """Log the existing files of ``paths`` (one per file name: ``best.ckpt``, ``last.ckpt``) as the artifact
    ``model-<run id>`` of type ``model``."""
    import wandb

    files = {Path(p).name: Path(p) for p in paths if p and os.path.isfile(p)}
    if not files:
        return
    artifact = wandb.Artifact(f"model-{run.id}", type="model", metadata={"files": sorted(files)})
    for name, path in sorted(files.items()):
        artifact.add_file(str(path), name=name)
    run.log_artifact(artifact, aliases=["latest"])


def log_certification_to_wandb(run_dir: str | Path, summary: dict, curve: tuple[list, list], sigmas: list[float],
                               config: dict, mode: str = "offline", project: str = "insta-rs",
                               group: str | None = None, name: str | None = None) -> None:
    """Log a certification run to W&B under stable names (``cert/acr``, ``cert/acc@0.25``, ...): ACR and
    certified accuracy at each grid radius as scalars, the
    certified-accuracy curve as a line plot, and the per-input sigma histogram. Offline by default
    (the run lands under ``run_dir/wandb``; ``wandb sync`` uploads it later). The run carries ``config``
    (the resolved certification config) and its ``tags``, job type ``certify``, and ``group`` (conf/logger/
    wandb.yaml: the experiment, and the sweep for a multirun job). The same table key ``cert/curve`` in every
    run lets a dashboard chart overlay the runs; ``python -m insta_rs.compare --wandb`` logs one chart with one
    series per run configuration."""
    if mode == "disabled":
        return
    import wandb

    tags = config.get("tags") if isinstance(config, dict) else None
    run = wandb.init(dir=str(run_dir), mode=mode, project=project, group=group, name=name, job_type="certify",
                     config=config, tags=list(tags) if tags else None, reinit="finish_previous")
    try:
        scalars = {"cert/acr": summary["acr"], "cert/clean_accuracy": summary["clean_accuracy"],
                   "cert/abstain_rate": summary["abstain_rate"]}
        for radius, acc in (summary["certified_accuracy"] or {}).items():
            scalars[f"cert/acc@{float(radius):g}"] = acc
        table = wandb.Table(data=[[float(r), float(a)] for r, a in zip(*curve)], columns=["radius", "certified_accuracy"])
        scalars["cert/curve"] = wandb.plot.line(table, "radius", "certified_accuracy",
                                                   title="Certified accuracy vs. radius")
        finite = [s for s in sigmas if s == s]
        if finite:
            scalars["cert/sigma_hist"] = wandb.Histogram(finite)
        run.log(scalars)
        run.summary.update({k: v for k, v in scalars.items() if isinstance(v, (int, float))})
        tsv = Path(run_dir) / "certify.tsv"
        if tsv.is_file():  # the rows themselves, versioned with the run
            artifact = wandb.Artifact(f"certify-{run.id}", type="certification")
            artifact.add_file(str(tsv))
            run.log_artifact(artifact)
    finally:
        run.finish()
