"""Hydra launcher plugins: a 2-job sweep through joblib (parallel local processes) and through submitit's
local executor (the SLURM launcher's local twin), each job in its own folder with its own W&B run."""

from __future__ import annotations

import pytest

from conftest import run_script


@pytest.mark.slow
@pytest.mark.parametrize("launcher,extra", [
    ("joblib", ["hydra.launcher.n_jobs=2"]),
    ("submitit_local", ["hydra.launcher.timeout_min=10"]),
])
def test_two_job_sweep_through_launcher(tmp_path, launcher, extra):
    sweep = tmp_path / launcher
    run_script("train.py", "-m", f"hydra/launcher={launcher}", *extra, "debug=fast", "logger=wandb",
               "train.sigma=0.12,0.25", f"hydra.sweep.dir={sweep}", timeout=400)
    for job in ("0", "1"):
        assert (sweep / job / "checkpoints" / "last.ckpt").is_file(), f"job {job} wrote no checkpoint"
        runs = list((sweep / job / "wandb").glob("offline-run-*"))
        assert len(runs) == 1, f"job {job}: {len(runs)} W&B runs"
    sigmas = sorted((sweep / job / "config.yaml").read_text().split("sigma: ")[1].split()[0] for job in ("0", "1"))
    assert sigmas == ["0.12", "0.25"]
