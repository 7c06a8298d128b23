"""A real certify.py process killed with SIGKILL mid-run, then rerun, writes the rows of an uninterrupted run; a
resume with other settings is refused naming both values; a resumed training runs without Lightning's warning."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from conftest import ROOT, run_script

ROW_COLUMNS = ["idx", "label", "predict", "radius", "correct", "sigma", "pA_lower", "guarantee", "search_draws"]


def complete_rows(path) -> int:
    if not path.exists():
        return 0
    return max(0, path.read_bytes().count(b"\n") - 1)


@pytest.mark.parametrize("search", ["fixed", "insta_rs"])
def test_sigkill_then_rerun_gives_identical_rows(trained_digits, tmp_path, search):
    args = [f"ckpt_path={trained_digits}/checkpoints/last.ckpt", "certify=fast", "certify.n0=32", "certify.n=4000",
            "certify.max=15", "certify.progress=false", "logger=none", f"sigma_search={search}"]
    if search == "insta_rs":
        args += ["sigma_search.m=64", "sigma_search.steps=3"]
    killed, full = tmp_path / "killed", tmp_path / "full"
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    process = subprocess.Popen([sys.executable, str(ROOT / "certify.py"), *args, f"hydra.run.dir={killed}"],
                               cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    tsv = killed / "certify.tsv"
    deadline = time.time() + 120
    while complete_rows(tsv) < 3 and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    written = complete_rows(tsv)
    assert 3 <= written < 15, f"the kill landed after {written} rows; the test needs it mid-run"
    assert not (killed / "summary.json").exists(), "a killed run must not leave a summary that looks complete"

    run_script("certify.py", *args, f"hydra.run.dir={killed}")
    run_script("certify.py", *args, f"hydra.run.dir={full}")
    a = pd.read_csv(full / "certify.tsv", sep="\t")
    b = pd.read_csv(killed / "certify.tsv", sep="\t")
    assert list(b["idx"]) == sorted(set(b["idx"])), "rows duplicated or out of order after the resume"
    pd.testing.assert_frame_equal(a[ROW_COLUMNS], b[ROW_COLUMNS])


def test_sigterm_stops_certification_and_the_rerun_resumes(trained_digits, tmp_path):
    """A SIGTERM (preemption, ``kill``) stops certify.py after the rows of the current batch, with one line and
    exit status 1 (Lightning's prediction loop alone would go on to the end); the same command then resumes and
    completes the file with every input once."""
    from insta_rs import analysis

    out = tmp_path / "cert"
    args = [f"ckpt_path={trained_digits / 'checkpoints' / 'last.ckpt'}", "certify=fast", "certify.max=10",
            "certify.n=10000", "certify.batch_size=2000", "certify.progress=false", "logger=none",
            f"hydra.run.dir={out}"]
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, str(ROOT / "certify.py"), *args], cwd=ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    tsv = out / "certify.tsv"
    deadline = time.time() + 240
    while time.time() < deadline and process.poll() is None:
        if tsv.exists() and len(tsv.read_text().splitlines()) >= 2:  # the header and a first row
            break
        time.sleep(0.2)
    assert process.poll() is None, "certification ended before it could be stopped"
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 1 and "stopped by SIGTERM" in stderr and "rerun" in stderr
    assert "stopped by SIGTERM" in (out / "certify.log").read_text()  # the log keeps what the console said
    done = len(analysis.read_certification(tsv))
    assert 1 <= done < 10
    run_script("certify.py", *args)
    rows = analysis.read_certification(tsv)
    assert len(rows) == 10 and rows["idx"].is_unique


def test_a_resume_with_other_settings_names_both_values(tmp_path):
    """The refusal of a resume names the first setting that differs with the value the rows were made with and
    the value this command asks for (both the file's writer and the sharded runs' check); the entry point adds
    the config group to the key."""
    from insta_rs.certification_file import CertificationLog, check_settings_file
    from insta_rs.cli import with_group
    from insta_rs.errors import ConfigError

    tsv = tmp_path / "certify.tsv"
    made, asked = {"n": 20000, "alpha": 0.001, "split": "test"}, {"n": 10000, "alpha": 0.001, "split": "test"}
    with CertificationLog(tsv, made):
        pass
    expected = (f"n=10000: the rows in {tsv} were made with n=20000; rerun with n=20000 to resume, or choose "
                f"another hydra.run.dir")
    for refuse in (lambda: CertificationLog(tsv, asked), lambda: check_settings_file(tsv, asked)):
        with pytest.raises(ConfigError) as error:
            refuse()
        assert str(error.value) == expected
    grouped = str(with_group(error.value, asked, "certify"))
    assert grouped.startswith("certify.n=10000: the rows in ")
    assert "made with certify.n=20000; rerun with certify.n=20000" in grouped
    with pytest.raises(ConfigError, match=r"^split=val: .* made with split=test; rerun with split=test"):
        check_settings_file(tsv, {**made, "split": "val"})
    with pytest.raises(ConfigError, match=r"^mode=predict: .* made without mode; rerun without mode"):
        check_settings_file(tsv, {**made, "mode": "predict"})


def test_a_resumed_training_does_not_warn_that_its_checkpoint_folder_exists(trained_digits, tmp_path):
    """Resuming writes into the run's own checkpoints/ on purpose: Lightning's 'Checkpoint directory ... exists
    and is not empty' warning is not shown (warnings on, as a user sees them)."""
    run_dir = tmp_path / "run"
    shutil.copytree(trained_digits, run_dir)
    result = run_script("train.py", f"hydra.run.dir={run_dir}", "ckpt_path=last", "train.epochs=3", "train.sigma=0.25",
                        "train.lr=0.05", "trainer.enable_progress_bar=false", "logger=none", "print_config=false",
                        env={"PYTHONWARNINGS": None})
    console = result.stdout + result.stderr
    assert "Restored all states" in console and "exists and is not empty" not in console
