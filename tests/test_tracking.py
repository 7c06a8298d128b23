"""W&B for training runs (insta_rs.tracking.WandbLogger): a readable run name, one run id across a resume, the
checkpoints as an artifact behind a switch; and a console without the stack's noise (insta_rs.cli.quiet_lightning),
checked on the real train.py with Python's warnings shown as a user sees them."""

from __future__ import annotations

import pytest

from conftest import run_script
from insta_rs.tracking import RUN_ID_FILE, continued_run_id, training_run_name
from wandb_offline import offline_runs

# what train.py printed on every run before these were silenced (issue 14): none of it may come back
NOISE = ("GPU available", "TPU available", "litlogger", "anonymous setting", "LeafSpec", "log_every_n_steps",
         "sync_dist", "is deprecated")
AS_A_USER = {"PYTHONWARNINGS": None, "WANDB_SILENT": None}  # warnings shown, W&B left to its own defaults
CONFIG_HEADER = "config (print_config=false hides it"  # the first line of the printed config


def noise_in(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if any(word in line for word in NOISE)]


def assert_config_printed(stdout: str, group: str) -> None:
    """The composed config, once, on stdout, as a YAML tree with ``group`` and without the plumbing groups."""
    assert stdout.count(CONFIG_HEADER) == 1
    tree = stdout.split(CONFIG_HEADER, 1)[1]
    assert f"\n{group}:\n" in tree and "\ncallbacks:" not in tree and "\nlogger:" not in tree


def test_training_run_name_names_the_settings_that_tell_runs_apart():
    assert training_run_name("digits", "small_cnn", "gaussian", 0.25, loss="gaussian", seed=0) == \
        "digits-small_cnn-gaussian-sigma0.25"
    assert training_run_name("cifar10", "cifar_resnet20", "gaussian", [0.12, 0.25, 0.5], loss="macer", seed=3,
                             experiment="cifar10_paper") == \
        "cifar10_paper/cifar10-cifar_resnet20-gaussian-macer-sigma0.12_0.25_0.5-seed3"
    assert training_run_name("digits", "small_cnn", "insta_rs", 0.5) == "digits-small_cnn-insta_rs-sigma0.5"


def test_resumed_training_continues_its_wandb_run_under_a_readable_name(tmp_path):
    """Train one epoch (offline W&B, checkpoints not logged: the default), resume for a second with
    log_checkpoints on: the two offline runs share one id, kept in wandb_id.txt, and the readable name; the
    resumed run's config says 2 epochs and it logged best.ckpt and last.ckpt as one model artifact."""
    run = tmp_path / "run"
    first = run_script("train.py", "debug=fast", "logger=wandb", f"hydra.run.dir={run}", env=AS_A_USER)
    assert noise_in(first.stderr) == []
    assert_config_printed(first.stdout, "train")
    second = run_script("train.py", "debug=fast", "logger=wandb", f"hydra.run.dir={run}", "ckpt_path=last",
                        "train.epochs=2", "logger.wandb.log_checkpoints=true", "print_config=false", env=AS_A_USER)
    assert noise_in(second.stderr) == [] and CONFIG_HEADER not in second.stdout
    runs = offline_runs(run)
    assert len(runs) == 2
    run_id = (run / "wandb_id.txt").read_text().strip()
    assert [r["id"] for r in runs] == [run_id, run_id]
    assert all(r["folder"].name.endswith(f"-{run_id}") for r in runs)
    assert [r["name"] for r in runs] == ["digits-small_cnn-gaussian-sigma0.25"] * 2
    assert [r["job_type"] for r in runs] == ["train", "train"]
    assert [r["config"]["train"]["epochs"] for r in runs] == [1, 2]
    assert runs[0]["artifacts"] == []
    assert runs[1]["artifacts"] == [(f"model-{run_id}", "model", ["best.ckpt", "last.ckpt"])]
    # certify.py prints its config too, with the certification's groups
    certified = run_script("certify.py", f"ckpt_path={run}/checkpoints/last.ckpt", "certify=fast", "certify.max=2",
                           "certify.n0=16", "certify.n=64", "certify.progress=false", "logger=none",
                           f"hydra.run.dir={tmp_path / 'cert'}", env=AS_A_USER)
    assert_config_printed(certified.stdout, "sigma_search")
    assert noise_in(certified.stderr) == []


def test_only_a_resume_reuses_the_run_id_of_the_folder(tmp_path):
    """A resume continues the W&B run recorded in the folder; a new run there (no ckpt_path), or a resume in a
    folder that has no record, gets a fresh id from W&B (None here)."""
    assert continued_run_id(tmp_path, resume=True) is None
    (tmp_path / RUN_ID_FILE).write_text("oldid123\n")
    assert continued_run_id(tmp_path, resume=True) == "oldid123"
    assert continued_run_id(tmp_path, resume=False) is None


@pytest.mark.slow
def test_ddp_training_console_is_quiet(tmp_path):
    """Two CPU ranks: no per-rank deprecations, no sync_dist or log_every_n_steps advice, no accelerator lines."""
    result = run_script("train.py", "debug=fast", "trainer=ddp_sim", "logger=csv", f"hydra.run.dir={tmp_path / 'run'}",
                        env=AS_A_USER)
    assert noise_in(result.stderr) == []
    assert "trained 1 epochs" in result.stdout
    assert_config_printed(result.stdout, "train")  # by rank 0 alone
