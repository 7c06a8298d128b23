"""Insta-RS Train (ALGORITHMS.md 4): the phase schedule, the update rule, the table in checkpoints and on
resume, DDP ranks holding identical tables, and the per-epoch histogram in the offline W&B run."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest
import torch
from scipy.stats import norm

from conftest import ROOT, run_script
from insta_rs import sigma_table as rules
from insta_rs.errors import ConfigError
from insta_rs.training import SmoothingClassifier, TrainSettings

SETTINGS = dict(method="insta_rs", sigma=0.25, sigma0=0.25, epochs=4, stage1_epochs=2, eta=0.1,
                sigma_min=0.05, sigma_max=1.0, m_update=16)


def test_phase_switches_at_stage1_epochs():
    s = TrainSettings.from_dict(SETTINGS)
    assert [s.phase_at(e) for e in range(4)] == ["gaussian", "gaussian", "instance", "instance"]
    assert TrainSettings.from_dict({"method": "gaussian"}).phase_at(100) == "gaussian"


@pytest.mark.parametrize("change,setting", [
    ({"stage1_epochs": 4}, "train.stage1_epochs"),
    ({"sigma_min": 1.5}, "train.sigma_max"),
    ({"sigma0": 3.0, "sigma": 3.0}, "train.sigma0"),
    ({"eta": 0.0}, "train.eta"),
    ({"m_update": 0}, "train.m_update"),
    ({"sigma": 0.5}, "train.sigma"),
])
def test_bad_settings_name_the_setting(change, setting):
    with pytest.raises(ConfigError, match=re.escape(setting)):
        TrainSettings.from_dict({**SETTINGS, **change})


def test_update_rule_matches_hand_computation():
    sigma = torch.tensor([0.5, 0.5, 0.5, 0.05])
    candidates = rules.candidate_sigmas(sigma, 0.1, 0.05, 1.0)
    e = np.exp(0.1)
    np.testing.assert_allclose(candidates[0].numpy(), [0.5 / e, 0.5, 0.5 * e], rtol=1e-6)
    np.testing.assert_allclose(candidates[3].numpy(), [0.05, 0.05, 0.05 * e], rtol=1e-6)  # clipped at sigma_min
    p = torch.tensor([[0.99, 0.95, 0.6], [0.9, 0.9, 0.9], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    new = rules.choose_sigmas(candidates, p, 0.1, 0.05, 1.0, m=16)
    eps = 1 / 32
    scores = candidates.numpy() * norm.ppf(np.clip(p.numpy(), eps, 1 - eps))
    expected = candidates.numpy()[np.arange(4), scores.argmax(1)]
    expected[2] = 0.5 / e / e  # always wrong: move to the smallest candidate, then shrink by e^-eta
    np.testing.assert_allclose(new.numpy(), expected, rtol=1e-6)
    assert new[1] == pytest.approx(0.5 * e)  # equal accuracy: the larger sigma has the larger radius


class ConstantClass(torch.nn.Module):
    """Predicts class 0 whatever the input: an example labelled 1 is always misclassified."""

    def __init__(self):
        super().__init__()
        self.bias = torch.nn.Parameter(torch.zeros(2))

    def forward(self, x):
        return torch.tensor([5.0, 0.0]).expand(x.shape[0], 2) + self.bias


def test_always_misclassified_example_shrinks_and_correct_one_grows():
    module = SmoothingClassifier(ConstantClass(), 2, TrainSettings.from_dict(SETTINGS), num_train=10)
    x = torch.rand(2, 1, 4, 4)
    y, idx = torch.tensor([1, 0]), torch.tensor([3, 7])
    for _ in range(3):
        module.update_sigmas(x, y, idx)
    e = np.exp(0.1)
    assert module.sigma_table[3] == pytest.approx(0.25 / e ** 6, rel=1e-5)  # two steps down per update
    assert module.sigma_table[7] == pytest.approx(0.25 * e ** 3, rel=1e-5)  # always right: the largest sigma
    assert module.label_table[3] == 1 and module.label_table[7] == 0 and module.label_table[0] == -1
    assert module.difficulty[3] == 0.0 and module.difficulty[7] == 1.0  # the first estimate at sigma0


def test_duplicate_indices_keep_the_lowest_ranks_value():
    indices = torch.tensor([4, 2, 9, 2, 4, 5])
    assert rules.first_occurrence(indices).tolist() == [True, True, True, False, False, True]


def _train(tmp_path, name, *extra):
    run_dir = tmp_path / name
    run_script("train.py", f"hydra.run.dir={run_dir}", "train=insta_rs", "dataset=synthetic", "train.epochs=4",
               "train.stage1_epochs=1", "train.batch_size=32", "trainer.enable_progress_bar=false", "logger=csv",
               *extra)
    return run_dir


def test_resume_mid_stage2_gives_the_uninterrupted_table(tmp_path):
    full = _train(tmp_path, "full")
    part = _train(tmp_path, "part", "trainer.max_epochs=3")  # stops after epoch 3 of 4: mid stage 2
    _train(tmp_path, "part", "ckpt_path=last")
    a = torch.load(full / "train_sigma.pt", weights_only=False)
    b = torch.load(part / "train_sigma.pt", weights_only=False)
    assert torch.equal(a["idx"], b["idx"]) and torch.equal(a["label"], b["label"])
    assert not torch.all(a["sigma"] == 0.25), "stage 2 changed no sigma: the test would not notice a lost table"
    torch.testing.assert_close(a["sigma"], b["sigma"], rtol=0, atol=0)
    ckpt = torch.load(part / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["epoch"] == 3 and ckpt["insta_rs"]["sigma_table"].shape[0] >= len(a["idx"])
    assert (part / "sigma_hist_train.png").stat().st_size > 0


def test_resume_from_another_model_is_refused(tmp_path):
    run_dir = _train(tmp_path, "run", "trainer.max_epochs=1")
    result = run_script("train.py", f"hydra.run.dir={run_dir}", "train=insta_rs", "dataset=synthetic",
                        "train.epochs=4", "train.stage1_epochs=1", "train.batch_size=32", "logger=none",
                        "model.width=8", "ckpt_path=last", check=False)
    assert result.returncode == 1, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "model.width" in result.stderr


def test_wandb_offline_run_records_the_histogram_every_epoch(tmp_path):
    run_dir = tmp_path / "wb"
    run_script("train.py", f"hydra.run.dir={run_dir}", "train=insta_rs", "dataset=synthetic", "train.epochs=3",
               "train.stage1_epochs=1", "train.batch_size=32", "trainer.enable_progress_bar=false", "logger=wandb")
    records = list(run_dir.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(records) == 1
    histograms = re.findall(rb"sigma_table/hist.{0,8}_type", records[0].read_bytes())
    assert len(histograms) >= 3, f"{len(histograms)} histogram records for 3 epochs"
    metrics = (run_dir / "csv" / "metrics.csv").read_text()
    assert "sigma_table/q50" in metrics and "sigma_table/at_min" in metrics and "train/phase" in metrics


@pytest.mark.slow
def test_ddp_two_cpu_ranks_hold_identical_tables(tmp_path):
    run_dir = tmp_path / "ddp"
    env_path = os.environ.get("PYTHONPATH", "")
    os.environ["PYTHONPATH"] = f"{ROOT / 'tests'}{os.pathsep}{env_path}"
    try:
        run_script("train.py", f"hydra.run.dir={run_dir}", "train=insta_rs", "dataset=synthetic", "trainer=ddp_sim",
                   "train.epochs=3", "train.stage1_epochs=1", "train.batch_size=16", "logger=csv",
                   "+callbacks.dump._target_=ddp_table_dump.DumpSigmaTable",
                   timeout=400)
    finally:
        os.environ["PYTHONPATH"] = env_path
    rank0 = torch.load(run_dir / "table_rank0.pt")
    rank1 = torch.load(run_dir / "table_rank1.pt")
    assert torch.equal(rank0["sigma"], rank1["sigma"]) and torch.equal(rank0["label"], rank1["label"])
    exported = torch.load(run_dir / "train_sigma.pt", weights_only=False)
    # every training example was visited by one rank or the other, and both ranks applied all updates
    assert len(exported["idx"]) == rank0["sigma"].numel() and (rank0["label"] >= 0).all()
    assert (rank0["sigma"] != 0.25).any()
    torch.testing.assert_close(exported["sigma"], rank0["sigma"][exported["idx"]])
