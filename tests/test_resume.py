"""A real certify.py process killed with SIGKILL mid-run, then rerun, writes the rows of an uninterrupted run."""

from __future__ import annotations

import os
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
            "certify.max=30", "certify.progress=false", "logger=none", f"sigma_search={search}"]
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
    assert 3 <= written < 30, f"the kill landed after {written} rows; the test needs it mid-run"
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
    args = [f"ckpt_path={trained_digits / 'checkpoints' / 'last.ckpt'}", "certify=fast", "certify.max=60",
            "certify.n=20000", "certify.batch_size=2000", "certify.progress=false", "logger=none",
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
    assert 1 <= done < 60
    run_script("certify.py", *args)
    rows = analysis.read_certification(tsv)
    assert len(rows) == 60 and rows["idx"].is_unique
