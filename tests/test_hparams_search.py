"""Hyperparameter search (conf/hparams_search, Hydra's Optuna sweeper) and the objective train.py returns:
certified accuracy at one radius on the validation split (insta_rs.training.ObjectiveSettings)."""

from __future__ import annotations

import re

import pytest
import torch
from omegaconf import OmegaConf
from scipy.stats import beta, norm
from torch import nn

from conftest import CONF, run_script
from insta_rs.errors import ConfigError
from insta_rs.training import ObjectiveSettings, certified_accuracy_at

OBJECTIVE_LINE = re.compile(r"^val/certified_accuracy at radius 0\.25: ([0-9.]+) ", re.M)


def search_space() -> dict:
    """conf/hparams_search/certified_accuracy.yaml's params: {key: (low, high)} or {key: [choices]}."""
    params = OmegaConf.load(CONF / "hparams_search" / "certified_accuracy.yaml").hydra.sweeper.params
    space = {}
    for key, spec in params.items():
        numbers = [float(v) for v in re.findall(r"-?\d+(?:\.\d+)?(?:e-?\d+)?", spec)]
        space[key] = tuple(numbers) if "interval" in spec else numbers
    return space


@pytest.mark.slow
def test_two_trial_optuna_search_maximises_certified_accuracy(tmp_path):
    sweep = tmp_path / "search"
    result = run_script("train.py", "-m", "hparams_search=certified_accuracy", "debug=fast", "logger=csv",
                        "hydra.sweeper.n_trials=2", f"hydra.sweep.dir={sweep}", "objective.n=200",
                        "objective.max_inputs=60", "print_config=false", timeout=400)
    for trial in ("0", "1"):
        assert (sweep / trial / "checkpoints" / "last.ckpt").is_file(), f"trial {trial} wrote no checkpoint"
    values = [float(v) for v in OBJECTIVE_LINE.findall(result.stdout)]
    assert len(values) == 2, result.stdout[-3000:]

    results = OmegaConf.load(sweep / "optimization_results.yaml")
    assert results.name == "optuna"
    assert results.best_value == pytest.approx(max(values), abs=1e-4)  # what each trial returned, maximised
    space = search_space()
    assert set(results.best_params) == set(space)
    for key, value in results.best_params.items():
        if isinstance(space[key], tuple):
            low, high = space[key]
            assert low <= value <= high, f"{key}={value} outside [{low}, {high}]"
        else:
            assert value in space[key], f"{key}={value} not one of {space[key]}"
    best = values.index(max(values))
    trained = OmegaConf.load(sweep / str(best) / "config.yaml")
    assert trained.train.lr == pytest.approx(results.best_params["train.lr"])
    assert trained.objective.sigma == trained.train.sigma == results.best_params["train.sigma"]


class Constant(nn.Module):
    """f(x) = class 0 whatever the noise: every draw lands on class 0."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(x.shape[0], 3)
        logits[:, 0] = 1.0
        return logits


def test_certified_accuracy_at_counts_correct_inputs_within_the_clopper_pearson_radius():
    """All n draws on class 0: pA_lower = Beta(alpha; n, 1) quantile and radius sigma * PhiInv(pA_lower) (scipy),
    so labels [0, 0, 1, 0] give 3/4 certified just below that radius and 0 just above; max_inputs=2 certifies
    inputs 0 and 2 (labels 0 and 1) only."""
    sigma, n, alpha = 0.5, 200, 0.001
    reach = sigma * norm.ppf(beta.ppf(alpha, n, 1))
    data = [(torch.rand(1, 4, 4), label, i) for i, label in enumerate([0, 0, 1, 0])]

    def at(radius, max_inputs=None):
        settings = ObjectiveSettings(metric="val/certified_accuracy", radius=radius, sigma=sigma, n0=10, n=n,
                                     alpha=alpha, max_inputs=max_inputs, batch_size=64)
        return certified_accuracy_at(Constant(), 3, data, settings, seed=0)

    assert at(reach - 1e-6) == 0.75
    assert at(reach + 1e-6) == 0.0
    assert at(0.0, max_inputs=2) == 0.5


def test_objective_settings_follow_the_trained_sigma_and_refuse_what_cannot_work(compose, capsys):
    from insta_rs.cli import settings

    def built(*overrides):
        return settings(ObjectiveSettings, compose("train", list(overrides)).objective, "objective")

    assert built() == ObjectiveSettings(sigma=0.25)  # the default objective: fit's val/acc_noisy, nothing certified
    assert built("train=insta_rs", "train.sigma0=0.5", "objective.metric=val/certified_accuracy").sigma == 0.5
    assert built("train=selector").sigma is None  # no train node: composes, nothing to certify
    with pytest.raises(ConfigError, match=r"objective\.metric='acr' is invalid: expected one of val/acc_noisy"):
        built("objective.metric=acr")
    with pytest.raises(ConfigError, match=r"objective\.sigma=\[0\.12, 0\.25\] is invalid: expected one noise level"):
        built("train.sigma=[0.12,0.25]", "objective.metric=val/certified_accuracy")
    capsys.readouterr()
    built("train.sigma=0.12", "objective.metric=val/certified_accuracy", "objective.radius=0.5")
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: objective.radius=0.5 is beyond the largest radius that "
                                               "objective.n=1000 draws can certify")


def test_a_bad_objective_is_one_line_and_exit_2_before_training(tmp_path):
    run_dir = tmp_path / "run"
    result = run_script("train.py", f"hydra.run.dir={run_dir}", "debug=fast", "objective.metric=acr", check=False)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr[-2000:]
    assert "objective.metric='acr'" in lines[0] and "val/certified_accuracy" in lines[0]
    assert not (run_dir / "checkpoints").exists()
