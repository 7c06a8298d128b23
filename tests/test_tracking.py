"""W&B for training runs (insta_rs.tracking.WandbLogger): a readable run name, one run id across a resume, the
checkpoints as an artifact behind a switch; certification and PREDICT runs named after the trained run and the
method, in its group, logged once; the run's log file (insta_rs.tracking.console_log) keeping what the console
said; and a console without the stack's noise (insta_rs.cli.quiet_lightning), checked on the real train.py with
Python's warnings shown as a user sees them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT, run_script
from insta_rs.tracking import RUN_ID_FILE, certification_run_name, console_log, continued_run_id, training_run_name
from wandb_offline import offline_runs

# what train.py printed on every run before these were silenced: none of it may come back
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
    # the checkpoint records the training's W&B name and group, for its certifications
    assert [r["config"]["wandb_run"] for r in runs] == [{"name": "digits-small_cnn-gaussian-sigma0.25",
                                                         "group": "adhoc"}] * 2
    # train.log keeps what the console said, both runs of the folder
    log = (run / "train.log").read_text()
    for line in [*first.stdout.splitlines(), *second.stdout.splitlines()]:
        assert line in log
    assert log.count("trained 1 epochs") == 1 and log.count("trained 2 epochs") == 1
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


def test_certification_run_name_says_the_trained_run_and_the_method():
    assert certification_run_name("digits-small_cnn-gaussian-sigma0.25", "fixed", {"sigma": 0.25}, 100_000, 0.001) == \
        "digits-small_cnn-gaussian-sigma0.25 / fixed sigma=0.25 (n=100000, alpha=0.001)"
    assert certification_run_name("m", "grid", {"levels": [1.0, 0.5, 0.25], "p0": 0.5}, 2000, 0.001) == \
        "m / grid levels=1,0.5,0.25 (n=2000, alpha=0.001)"
    assert certification_run_name("m", "insta_rs", {"m": 64}, 1000, 0.01, mode="predict") == \
        "m / predict: insta_rs (n=1000, alpha=0.01)"


def test_certification_and_predict_runs_join_the_trained_run_once(trained_digits, tmp_path):
    """certify.py and PREDICT with offline W&B on the shared digits model: each run is named after the trained run
    and the method, in the training run's group, with the sigma used in its config (not sigma_search.sigma: None)
    and no config key ''; rerunning the finished certification logs no second run and prints no Lightning
    warning; certify.log keeps the console of both runs, with plain progress lines (output is not a terminal)."""
    ckpt = f"ckpt_path={trained_digits}/checkpoints/last.ckpt"
    cert, pred = tmp_path / "cert", tmp_path / "pred"
    settings = [ckpt, "certify=fast", "certify.max=3", "certify.n0=16", "certify.n=64", "logger=wandb"]
    first = run_script("certify.py", *settings, f"hydra.run.dir={cert}")
    again = run_script("certify.py", *settings, f"hydra.run.dir={cert}", "print_config=false")
    run_script("certify.py", *settings, "certify.mode=predict", f"hydra.run.dir={pred}", "print_config=false")
    (trained,) = offline_runs(trained_digits)
    expected = {"certify": f"{trained['name']} / fixed sigma=0.25 (n=64, alpha=0.001)",
                "predict": f"{trained['name']} / predict: fixed sigma=0.25 (n=64, alpha=0.001)"}
    for folder, job_type in ((cert, "certify"), (pred, "predict")):
        (run,) = offline_runs(folder)  # one run: the rerun logged none
        assert (run["name"], run["group"], run["job_type"]) == (expected[job_type], trained["group"], job_type)
        assert run["config"]["sigma_search"]["sigma"] == 0.25 and run["config"]["trained"]["name"] == trained["name"]
        assert "" not in run["config"]
        assert [(kind, files) for _, kind, files in run["artifacts"] if kind == "certification"] == \
            [("certification", [f"{job_type}.tsv"])]
    assert "already logged as run" in again.stdout and "Total length of `DataLoader`" not in again.stderr
    log = (cert / "certify.log").read_text()
    for line in [*first.stdout.splitlines(), *first.stderr.splitlines(), *again.stdout.splitlines()]:
        assert line in log
    assert "\r" not in first.stderr + log and "certify: 3/3 inputs, cert_acc_r0" in first.stderr
    assert "resuming after 3 of 3 rows" in log


def test_console_log_keeps_prints_logging_and_a_progress_bars_last_state(tmp_path, capsys):
    import logging
    import sys

    handler = logging.StreamHandler(sys.stderr)  # as Hydra's console handler: given the stream at start-up
    logger = logging.getLogger("insta_rs.test_console_log")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        with console_log(tmp_path / "job.log"):
            print("table")
            logger.info("a logging record")
            sys.stderr.write("bar 1/3\rbar 2/3\rbar 3/3\n")
            sys.stderr.write("bar 1/9\rbar 4/9")  # stopped without its newline
        with console_log(tmp_path / "job.log"):  # a rerun appends
            print("resumed")
        print("after")
    finally:
        logger.removeHandler(handler)
    assert (tmp_path / "job.log").read_text() == "table\na logging record\nbar 3/3\nbar 4/9\nresumed\n"
    console = capsys.readouterr()
    assert console.out == "table\nresumed\nafter\n" and "bar 1/3\rbar 2/3" in console.err


def test_sigterm_stops_training_with_exit_1_and_the_resume_command_in_train_log(tmp_path):
    """A SIGTERM (preemption, ``kill``) during training: Lightning stops after the current batch and would exit 0
    as if the run had finished; the run says it was stopped and how to resume, exits 1, and train.log keeps it."""
    run = tmp_path / "run"
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    env.pop("INSTA_RS_RUN_DIR", None)
    process = subprocess.Popen([sys.executable, str(ROOT / "train.py"), "train.epochs=50", "logger=csv",
                                "trainer.enable_progress_bar=false", "print_config=false", f"hydra.run.dir={run}"],
                               cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and process.poll() is None and not (run / "checkpoints" / "last.ckpt").exists():
        time.sleep(0.2)
    assert process.poll() is None, "training ended before it could be stopped"
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 1
    (line,) = [line for line in stderr.splitlines() if "stopped by SIGTERM" in line]
    assert f"ckpt_path=last hydra.run.dir={run}" in line and "Traceback" not in stderr
    assert line in (run / "train.log").read_text()
