"""Experiment tracking on W&B and in the run folder: training runs log through ``WandbLogger`` (Lightning's,
with a readable run name, a run id kept in the run folder so a resumed training continues its W&B run, and
checkpoints as an artifact behind a switch); certification and PREDICT runs through
``log_certification_to_wandb``; ``console_log`` keeps what the console said in the run's log file
(``train.log``, ``certify.log``).

Named ``tracking`` so it does not shadow the standard library's ``logging``. The certification file itself
is insta_rs.certification_file.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
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


TRAINED_RUN_KEY = "wandb_run"
"""The key of a training config (and so of its checkpoint's recorded config) that holds the training run's W&B
name and group (``trained_run_record``), which its certifications take up."""

CERT_RUN_FILE = "wandb_run.json"  # in a certification run folder: the W&B run it logged, and the rows it logged


def trained_run_record(name: str, group: str) -> dict:
    """What train.py records in its config (``TRAINED_RUN_KEY``) so that certifications of the checkpoint name
    their W&B runs after it and join its group: {"name": <the training's W&B name>, "group": <its group>}."""
    return {"name": str(name), "group": str(group)}


def trained_run_identity(config: dict, run_dir: str | Path) -> tuple[str, str]:
    """(name, group) of the training run that made a checkpoint, from its recorded config: the record of
    ``trained_run_record``; for a checkpoint made before it existed, the W&B logger's group (or the
    experiment's name, else ``adhoc``) and the run folder's last two parts as the name."""
    record = config.get(TRAINED_RUN_KEY) or {}
    logger = (config.get("logger") or {}).get("wandb") or {}
    name = record.get("name") or logger.get("name") or "/".join(Path(run_dir).parts[-2:])
    group = record.get("group") or logger.get("group") or config.get("experiment_name") or "adhoc"
    return str(name), str(group)


def certification_run_name(trained_name: str, method: str, spec: dict, n: int, alpha: float,
                           mode: str = "certify") -> str:
    """The W&B name of a certification (or PREDICT) run: the trained run's name, then the method as the
    certified-accuracy legends write it: ``digits-small_cnn-gaussian-sigma0.25 / fixed sigma=0.25 (n=100000,
    alpha=0.001)``, ``... / predict: insta_rs (n=1000, alpha=0.001)``, ``... / grid levels=1,0.5,0.25 (...)``.
    The sigma shown is the one used (the fixed method's, filled in from the checkpoint; semi_elastic's
    sigma_b)."""
    sigma = spec.get("sigma", spec.get("sigma_b"))
    levels = spec.get("levels")
    head = " ".join(part for part in (
        f"{mode}:" if mode != "certify" else "", method,
        f"sigma={float(sigma):g}" if isinstance(sigma, (int, float)) and not isinstance(sigma, bool) else "",
        "levels=" + ",".join(f"{float(level):g}" for level in levels) if levels else "") if part)
    return f"{trained_name} / {head} (n={int(n)}, alpha={float(alpha):g})"


def log_certification_to_wandb(run_dir: str | Path, summary: dict, curve: tuple[list, list] | None,
                               sigmas: list[float], config: dict, mode: str = "offline", project: str = "insta-rs",
                               group: str | None = None, name: str | None = None,
                               job_type: str = "certify") -> str | None:
    """Log a certification run (``job_type`` certify) or a PREDICT run (``predict``) to W&B under stable names:
    ``cert/acr``, ``cert/acc@0.25``, ... and the certified-accuracy curve as a line plot (certify), or
    ``predict/accuracy`` and ``predict/abstain_rate`` (predict), each number's 95% interval beside it
    (``interval_scalars``: ``cert/acr_lo``, ``cert/acr_hi``, ...; the curve's table has its band as columns lo,
    hi); the per-input sigma histogram; the TSV as an artifact. Offline by default (the run lands under ``run_dir/wandb``; ``wandb sync`` uploads it later).
    The run carries ``config`` (the resolved certification config, with the sigma_search actually used),
    its ``tags``, ``name`` and ``group`` (certification.run: the trained run's name and method, and the
    trained run's group). The same table key ``cert/curve`` in every run lets a dashboard chart overlay the
    runs; ``python -m insta_rs.compare --wandb`` logs one chart with one series per run configuration.

    One certification folder is one W&B run: its id is kept in ``run_dir/wandb_run.json`` with the SHA-256 of
    the rows it logged. Rerunning a finished certification (the same rows) logs nothing again; a rerun that
    added rows continues the same W&B run. Returns the run id (None when disabled)."""
    if mode == "disabled":
        return None
    import hashlib
    import json

    import wandb

    run_dir = Path(run_dir)
    tsv = run_dir / ("predict.tsv" if job_type == "predict" else "certify.tsv")
    digest = hashlib.sha256(tsv.read_bytes()).hexdigest() if tsv.is_file() else None
    record_path = run_dir / CERT_RUN_FILE
    record = json.loads(record_path.read_text(encoding="utf-8")) if record_path.is_file() else {}
    if record.get("id") and digest is not None and record.get("tsv_sha256") == digest:
        print(f"W&B: these rows are already logged as run {record['id']} ({name}); nothing new to log")
        return record["id"]
    tags = config.get("tags") if isinstance(config, dict) else None
    run = wandb.init(dir=str(run_dir), mode=mode, project=project, group=group, name=name, job_type=job_type,
                     config=config, tags=list(tags) if tags else None, reinit="finish_previous",
                     **({"id": record["id"], "resume": "allow"} if record.get("id") else {}))
    try:
        if job_type == "predict":
            scalars = {"predict/accuracy": summary["accuracy"], "predict/abstain_rate": summary["abstain_rate"]}
        else:
            scalars = {"cert/acr": summary["acr"], "cert/clean_accuracy": summary["clean_accuracy"],
                       "cert/abstain_rate": summary["abstain_rate"]}
            for radius, acc in (summary["certified_accuracy"] or {}).items():
                scalars[f"cert/acc@{float(radius):g}"] = acc
            from .analysis import curve_band

            lows, highs = curve_band(curve[1], summary["rows"]) if summary.get("acr") is not None else ([], [])
            band = list(zip(lows, highs)) or [(None, None)] * len(curve[0])  # the curve's 95% band
            table = wandb.Table(data=[[float(r), float(a), lo, hi] for r, a, (lo, hi) in zip(*curve, band)],
                                columns=["radius", "certified_accuracy", "lo", "hi"])
            scalars["cert/curve"] = wandb.plot.line(table, "radius", "certified_accuracy",
                                                    title="Certified accuracy vs. radius")
        scalars.update(interval_scalars(summary, "predict" if job_type == "predict" else "cert"))
        finite = [s for s in sigmas if s == s]
        if finite:
            scalars[f"{'predict' if job_type == 'predict' else 'cert'}/sigma_hist"] = wandb.Histogram(finite)
        run.log(scalars)
        run.summary.update({k: v for k, v in scalars.items() if isinstance(v, (int, float))})
        if digest is not None:  # the rows themselves, versioned with the run
            artifact = wandb.Artifact(f"{job_type}-{run.id}", type="certification")
            artifact.add_file(str(tsv))
            run.log_artifact(artifact)
        record_path.write_text(json.dumps({"id": run.id, "tsv_sha256": digest}) + "\n", encoding="utf-8")
        return run.id
    finally:
        run.finish()


def interval_scalars(summary: dict, prefix: str) -> dict[str, float]:
    """The ends of the summary's 95% intervals (``summary["intervals"]``, docs/statistics.md) as W&B scalars beside
    the numbers: ``cert/acr_lo``, ``cert/acr_hi``, ``cert/acc@0.25_lo``, ..., ``predict/accuracy_lo``, ...;
    none for a summary without intervals (rows of several guarantees)."""
    intervals = summary.get("intervals") or {}
    named = {key: value for key, value in intervals.items() if key not in ("confidence", "certified_accuracy")}
    named.update({f"acc@{float(radius):g}": value for radius, value in (intervals.get("certified_accuracy") or {}).items()})
    return {f"{prefix}/{key}_{end}": float(bound) for key, value in named.items() if value is not None
            for end, bound in zip(("lo", "hi"), value)}


class _Tee:
    """A text stream that writes to ``stream`` (the console) and to ``log`` (the run's log file). In the log a
    line rewritten with carriage returns (a progress bar on a terminal) keeps its last state only."""

    def __init__(self, stream, log):
        self.stream, self.log, self.pending = stream, log, ""

    def write(self, text: str) -> int:
        written = self.stream.write(text)
        lines = (self.pending + text).split("\n")
        self.pending = lines.pop()
        for line in lines:
            self.log.write(line.rsplit("\r", 1)[-1] + "\n")
        self.log.flush()
        return written if written is not None else len(text)

    def flush(self) -> None:
        self.stream.flush()

    def close_line(self) -> None:
        """Write a last line left without its newline (the final state of a progress bar)."""
        rest = self.pending.rsplit("\r", 1)[-1]
        if rest.strip():
            self.log.write(rest + "\n")
        self.pending = ""

    def __getattr__(self, name):  # isatty, fileno, encoding, ...: the console's
        return getattr(self.stream, name)


@contextlib.contextmanager
def console_log(path: str | Path | None):
    """Inside the block, everything written to stdout and stderr (``print``, warnings, the logging handlers
    that write to the console, the message of an error) also goes to ``path``, appended, so a rerun or a
    resumed run adds to the log of its run folder; a progress bar's carriage-return updates leave their last
    state only. ``path`` None: nothing is kept (a DDP rank other than 0, whose console rank 0 already logs)."""
    if path is None:
        yield
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    originals = sys.stdout, sys.stderr
    with open(path, "a", encoding="utf-8") as log:
        tees = _Tee(originals[0], log), _Tee(originals[1], log)
        handlers = [h for h in _stream_handlers() if h.stream in originals]
        for handler in handlers:  # Hydra's console handler holds the stream it was given at start-up
            handler.setStream(tees[originals.index(handler.stream)])
        sys.stdout, sys.stderr = tees
        try:
            yield
        finally:
            for handler in handlers:
                if handler.stream in tees:
                    handler.setStream(originals[tees.index(handler.stream)])
            if sys.stdout is tees[0] and sys.stderr is tees[1]:
                sys.stdout, sys.stderr = originals
            for tee in tees:
                tee.close_line()


def _stream_handlers() -> list[logging.StreamHandler]:
    """The logging handlers that write to a stream (not a file), of the root logger and of every named one."""
    loggers = [logging.getLogger(), *(logging.getLogger(name) for name in list(logging.root.manager.loggerDict))]
    return [h for logger in loggers for h in getattr(logger, "handlers", [])
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)]
