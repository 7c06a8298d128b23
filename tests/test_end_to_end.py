"""train.py and certify.py as a user runs them, on the embedded digits data with tiny settings."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from conftest import run_script

CERTIFY_FAST = ["certify=fast", "certify.n0=32", "certify.n=500", "certify.progress=false"]


def read_tsv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t")


def test_train_writes_checkpoints_config_metrics_and_wandb(trained_digits):
    run = trained_digits
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert (run / "checkpoints" / "best.ckpt").is_file()
    config = (run / "config.yaml").read_text()
    assert "sigma: 0.25" in config and "${" not in config  # resolved
    metrics = pd.read_csv(run / "csv" / "metrics.csv")
    assert metrics["val/acc_noisy"].notna().sum() == 2 and metrics["train/loss"].notna().sum() == 2
    offline_runs = list((run / "wandb").glob("offline-run-*"))
    assert offline_runs, "the W&B run is written offline under the run directory"
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["insta_rs"]["config"]["train"]["sigma"] == 0.25 and ckpt["insta_rs"]["num_classes"] == 10


def test_certify_tsv_and_summary_agree(trained_digits, tmp_path):
    out = tmp_path / "cert"
    result = run_script("certify.py", f"ckpt_path={trained_digits}/checkpoints/last.ckpt", f"hydra.run.dir={out}",
                        *CERTIFY_FAST, "certify.max=30", "certify.skip=3")
    rows = read_tsv(out / "certify.tsv")
    assert list(rows.columns[:11]) == ["idx", "label", "predict", "radius", "correct", "time", "sigma", "pA_lower",
                                       "guarantee", "search_time", "search_draws"]
    assert len(rows) == 30 and list(rows["idx"]) == list(range(0, 90, 3))
    assert set(rows["guarantee"]) == {"sound"} and (rows["sigma"] == 0.25).all()
    # the rows are consistent with CERTIFY: abstain <=> radius 0 and pA_lower < 1/2
    abstain = rows["predict"] == -1
    assert (rows.loc[abstain, "radius"] == 0).all() and (rows.loc[~abstain, "pA_lower"] >= 0.5).all()
    assert ((rows["predict"] == rows["label"]).astype(int) == rows["correct"]).all()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rows"] == 30 and summary["guarantee"] == {"sound": 30}
    assert summary["acr"] == pytest.approx((rows["radius"] * rows["correct"]).mean())
    assert summary["clean_accuracy"] == pytest.approx(rows["correct"].mean())
    assert summary["abstain_rate"] == pytest.approx(abstain.mean())
    for r, acc in summary["certified_accuracy"].items():
        assert acc == pytest.approx(((rows["correct"] == 1) & (rows["radius"] >= float(r))).mean())
    assert summary["acr"] > 0, "a model trained 2 epochs on digits certifies something"
    for name in ("table.md", "certified_accuracy.png", "sigma_hist.png"):
        assert (out / name).stat().st_size > 0
    assert "ACR" in result.stdout
    assert list((out / "wandb").glob("offline-run-*"))


def test_certify_resumes_to_identical_rows(trained_digits, tmp_path):
    ckpt = f"ckpt_path={trained_digits}/checkpoints/last.ckpt"
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    run_script("certify.py", ckpt, f"hydra.run.dir={full}", *CERTIFY_FAST, "certify.max=12", "logger=none")
    run_script("certify.py", ckpt, f"hydra.run.dir={resumed}", *CERTIFY_FAST, "certify.max=5", "logger=none")
    with open(resumed / "certify.tsv", "a") as f:  # a run killed in the middle of writing a row
        f.write("5\t3\t3\t0.1")
    run_script("certify.py", ckpt, f"hydra.run.dir={resumed}", *CERTIFY_FAST, "certify.max=12", "logger=none")
    a, b = read_tsv(full / "certify.tsv"), read_tsv(resumed / "certify.tsv")
    cols = ["idx", "label", "predict", "radius", "correct", "sigma", "pA_lower"]
    pd.testing.assert_frame_equal(a[cols], b[cols])
    # a resume with other settings is refused and leaves the file alone
    before = (resumed / "certify.tsv").read_bytes()
    result = run_script("certify.py", ckpt, f"hydra.run.dir={resumed}", *CERTIFY_FAST, "certify.n=600",
                        "logger=none", check=False)
    assert result.returncode == 2 and "n" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert (resumed / "certify.tsv").read_bytes() == before


@pytest.mark.parametrize("overrides,code,words", [
    (["ckpt_path=/nonexistent/last.ckpt"], 2, "does not exist"),  # a setting that names no file
    (["certify.n=0"], 2, "certify.n"),
    (["certify.alpha=1.5"], 2, "certify.alpha"),
    (["sigma_search.sigma=-0.5"], 2, "sigma"),
    (["dataset=nosuchdata"], 2, "dataset"),
    (["certify.skip=100000"], 2, "certify.skip"),
])
def test_certify_bad_input_is_one_line(trained_digits, tmp_path, overrides, code, words):
    args = [f"ckpt_path={trained_digits}/checkpoints/last.ckpt", f"hydra.run.dir={tmp_path / 'x'}", *CERTIFY_FAST,
            "logger=none", *overrides]
    result = run_script("certify.py", *args, check=False)
    assert result.returncode == code, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0], result.stderr
    assert not (tmp_path / "x" / "summary.json").exists()


def test_certify_refuses_a_truncated_checkpoint(trained_digits, tmp_path):
    broken = tmp_path / "broken.ckpt"
    broken.write_bytes((trained_digits / "checkpoints" / "last.ckpt").read_bytes()[:5000])
    result = run_script("certify.py", f"ckpt_path={broken}", f"hydra.run.dir={tmp_path / 'x'}", "logger=none",
                        check=False)
    assert result.returncode == 1 and "truncated" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_train_bad_config_is_one_line(tmp_path):
    result = run_script("train.py", f"hydra.run.dir={tmp_path}", "train.lr_schedule=triangle", check=False)
    assert result.returncode == 2 and "train.lr_schedule" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_ddp_two_cpu_processes_train_and_log(tmp_path):
    run_script("train.py", "trainer=ddp_sim", "debug=fast", "train.epochs=2", f"hydra.run.dir={tmp_path}",
               "trainer.limit_train_batches=4", timeout=400)
    metrics = pd.read_csv(tmp_path / "csv" / "metrics.csv")
    assert metrics["val/acc_noisy"].notna().sum() == 2
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    assert not list(tmp_path.parent.glob("train_ddp_process_*")), "the second rank writes nowhere else"


@pytest.mark.slow
def test_multirun_sweep(tmp_path):
    run_script("train.py", "-m", "debug=fast", "train.sigma=0.12,0.5", f"hydra.sweep.dir={tmp_path}")
    for job, sigma in (("0", 0.12), ("1", 0.5)):
        ckpt = torch.load(tmp_path / job / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
        assert ckpt["insta_rs"]["config"]["train"]["sigma"] == sigma
