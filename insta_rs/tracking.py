"""Experiment tracking on W&B for certification runs (training logs through Lightning's WandbLogger).

Named ``tracking`` so it does not shadow the standard library's ``logging``. The certification file itself
is insta_rs.certification_file.
"""

from __future__ import annotations

from pathlib import Path

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
