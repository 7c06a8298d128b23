"""The certified sigma selector (ALGORITHMS.md 3d, SOUND.md 3d): soundness on analytic models whose smoothed
probabilities are known in closed form, the alpha/2 split and min of radii, abstentions, selector labels,
the checkpoint-identity refusal, and training + certifying end to end on a tiny fake base run."""

from __future__ import annotations

import dataclasses
import math
import shutil
import sys

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from scipy.stats import norm
from torch import nn
from torch.utils.data import WeightedRandomSampler

from conftest import ROOT
from insta_rs.checkpoints import build_selector_network, file_digest, load_run, load_selector, save_selector
from insta_rs.data import Synthetic
from insta_rs.errors import CheckpointError, ConfigError
from insta_rs.models import BlockAverage, SmallCNN
from insta_rs.search.base import SearchContext
from insta_rs.certificates.selector import answer_radius, switch_radii
from insta_rs.search import selector as selector_module
from insta_rs.search.selector import SelectorSigma, check_levels
from insta_rs.selector_check import distillation_check_files
from insta_rs import selector_training
from insta_rs.selector_labels import level_balance_weights, nearest_level_labels, reached, selector_radii, selector_targets
from insta_rs.selector_training import SelectorSettings, fit_selector
from insta_rs.smoothing import Smooth
from insta_rs.training import SmoothingClassifier, TrainSettings

# --------------------------------------------------------------------------------------------------
# Analytic models on 2-d inputs of shape (1, 1, 2); every smoothed probability is a normal CDF.


class Halfplane(nn.Module):
    """f(x) = 1 if w.x > t else 0. Smoothed at sigma: P[f = 1] = Phi((w.x - t) / (sigma |w|))."""

    def __init__(self, w, t):
        super().__init__()
        self.w, self.t = torch.tensor(w, dtype=torch.float32), float(t)

    def forward(self, x):
        z = x.flatten(1) @ self.w - self.t
        return torch.stack([torch.zeros_like(z), z], dim=1)

    def p1(self, points: np.ndarray, sigma: float) -> np.ndarray:
        w = self.w.double().numpy()
        return norm.cdf((points @ w - self.t) / (sigma * np.linalg.norm(w)))


class Band(nn.Module):
    """f(x) = 1 if |x_1 - c| < a else 0. Smoothed: P[f = 1] = Phi((c + a - x_1)/sigma) - Phi((c - a - x_1)/sigma),
    which depends on sigma: the class of g_sigma changes with the level, so the selector's choice matters."""

    def __init__(self, c, a):
        super().__init__()
        self.c, self.a = float(c), float(a)

    def forward(self, x):
        z = self.a - (x.flatten(1)[:, 0] - self.c).abs()
        return torch.stack([torch.zeros_like(z), z], dim=1)

    def p1(self, points: np.ndarray, sigma: float) -> np.ndarray:
        x1 = points[:, 0]
        return norm.cdf((self.c + self.a - x1) / sigma) - norm.cdf((self.c - self.a - x1) / sigma)


class Constant(nn.Module):
    """Always the same class."""

    def __init__(self, cls: int, num_classes: int):
        super().__init__()
        self.cls, self.num_classes = cls, num_classes

    def forward(self, x):
        out = torch.zeros(x.shape[0], self.num_classes)
        out[:, self.cls] = 1.0
        return out


def method_with(selector: nn.Module, levels, sigma, **kwargs) -> SelectorSigma:
    method = SelectorSigma(ckpt_path="unused.pt", **kwargs)
    method.set_selector(selector, levels, sigma)
    return method


def points_in_ball(center: np.ndarray, radius: float, rng: np.random.Generator, inside: int = 400,
                   boundary: int = 64) -> np.ndarray:
    """Uniform points in the open 2-d disk plus points just inside its boundary at evenly spaced angles."""
    angles = rng.uniform(0, 2 * np.pi, inside)
    radii = radius * np.sqrt(rng.uniform(0, 1, inside))
    edge = np.linspace(0, 2 * np.pi, boundary, endpoint=False)
    angles = np.concatenate([angles, edge])
    radii = np.concatenate([radii, np.full(boundary, radius * (1 - 1e-7))])
    return center + np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)


@pytest.mark.parametrize("kind", ["halfplane", "band"])
def test_certified_ball_keeps_the_level_and_the_instancewise_class(kind):
    """SOUND.md 3d: inside the returned ball the exact smoothed selector picks the same level and the exact
    classifier smoothed at that level the same class; radii never exceed the exact distances."""
    torch.manual_seed(0)
    levels, sigma_sel = (0.25, 0.5), 0.3
    selector = Halfplane([0.0, 1.0], 0.5)  # level 0.5 above x2 = 0.5, level 0.25 below
    classifier = Halfplane([1.0, 0.6], 0.7) if kind == "halfplane" else Band(0.5, 0.3)
    method = method_with(selector, levels, sigma_sel)
    smooth = Smooth(classifier, 2, batch_size=1000)
    rng = np.random.default_rng(1)
    centers = rng.uniform(0.0, 1.0, size=(14, 2))
    certified = 0
    for i, center in enumerate(centers):
        x = torch.tensor(center, dtype=torch.float32).view(1, 1, 2)
        row = method.certify(smooth, x, 100, 4000, 0.01, torch.Generator().manual_seed(i))
        assert row.guarantee == "sound"
        assert row.radius == pytest.approx(min(row.extra["radius_selector"], row.extra["radius_classifier"]), abs=1e-6)
        d_sel = abs(center[1] - 0.5)
        assert row.extra["radius_selector"] <= d_sel + 1e-6  # the exact selector radius is the distance to x2 = 0.5
        if kind == "halfplane" and row.predict != -1:
            d_cls = abs(center @ np.array([1.0, 0.6]) - 0.7) / math.hypot(1.0, 0.6)
            assert row.radius <= min(d_sel, d_cls) + 1e-6
            if min(d_sel, d_cls) >= 0.15:  # and the bounds are not vacuous
                assert row.radius >= 0.5 * min(d_sel, d_cls)
        if row.predict == -1 or row.radius <= 0:
            continue
        certified += 1
        points = points_in_ball(center, row.radius, rng)
        level_index = (selector.p1(points, sigma_sel) > 0.5).astype(int)
        assert (level_index == row.extra["level"]).all(), f"the smoothed selector changes level in the ball at {center}"
        assert row.sigma == levels[row.extra["level"]]
        classes = (classifier.p1(points, row.sigma) > 0.5).astype(int)
        assert (classes == row.predict).all(), f"the instance-wise class changes in the ball at {center}"
    assert certified >= 6


def test_band_answers_depend_on_the_level():
    """The band case is discriminating: at the band's centre g_0.25 says 1 and g_0.5 says 0, and the certified
    answer follows the selector's level."""
    levels = (0.25, 0.5)
    classifier = Band(0.5, 0.3)
    smooth = Smooth(classifier, 2, batch_size=1000)
    answers = {}
    for level_index in (0, 1):
        method = method_with(Constant(level_index, 2), levels, 0.25)
        x = torch.tensor([0.5, 0.5]).view(1, 1, 2)
        row = method.certify(smooth, x, 100, 4000, 0.01, torch.Generator().manual_seed(3))
        answers[level_index] = (row.predict, row.sigma)
    assert answers == {0: (1, 0.25), 1: (0, 0.5)}
    assert classifier.p1(np.array([[0.5, 0.5]]), 0.25)[0] > 0.5 > classifier.p1(np.array([[0.5, 0.5]]), 0.5)[0]


@pytest.mark.parametrize("sigma_sel, levels, limited_by", [(0.25, (0.1, 1.0), "selector"),
                                                          (2.0, (0.1, 0.3), "classifier")])
def test_min_of_radii_and_alpha_split(sigma_sel, levels, limited_by):
    """Deterministic selector and classifier: every draw agrees, so each lower bound is the closed form
    (alpha/2)^(1/n) of the Clopper-Pearson bound at k = n, at half of alpha for each certificate."""
    alpha, n0, n, sel_n = 0.02, 20, 500, 300
    method = method_with(Constant(1, 2), levels, sigma_sel, selector_n=sel_n)
    smooth = Smooth(Constant(2, 3), 3, batch_size=256)
    row = method.certify(smooth, torch.zeros(1, 4, 4), n0, n, alpha, torch.Generator().manual_seed(0))
    # radii use the sigma the noise was scaled by: float32(0.3) > 0.3, so r_cls is the float32 one
    r_sel = float(np.float32(sigma_sel)) * norm.ppf((alpha / 2) ** (1 / sel_n))
    r_cls = float(np.float32(levels[1])) * norm.ppf((alpha / 2) ** (1 / n))
    assert row.predict == 2 and row.sigma == levels[1] and row.extra["level"] == 1
    assert row.extra["radius_selector"] == pytest.approx(r_sel, abs=2e-6)
    assert row.extra["radius_classifier"] == pytest.approx(r_cls, abs=2e-6)
    assert row.radius == pytest.approx(min(r_sel, r_cls), rel=1e-9)
    assert row.extra["limited_by"] == limited_by
    assert row.p_lower == pytest.approx((alpha / 2) ** (1 / n), rel=1e-9)
    assert row.extra["pA_lower_selector"] == pytest.approx((alpha / 2) ** (1 / sel_n), abs=2e-6)
    # spending the whole alpha on either certificate would have given a larger radius
    assert row.radius < min(sigma_sel * norm.ppf(alpha ** (1 / sel_n)), levels[1] * norm.ppf(alpha ** (1 / n)))
    assert row.search_draws == n0 + sel_n


def test_selector_radius_uses_the_float32_sigma_of_the_noise():
    """The noise is scaled by float32(sigma_sel), which for 0.12 is below 0.12: the selector's radius uses
    that sigma (closed-form bound (alpha/2)^(1/n) at k = n), never the float64 one."""
    alpha, n0, n = 0.02, 20, 500
    method = method_with(Constant(0, 2), (0.5, 1.0), 0.12)
    row = method.certify(Smooth(Constant(1, 3), 3, batch_size=256), torch.zeros(1, 4, 4), n0, n, alpha,
                         torch.Generator().manual_seed(0))
    z = norm.ppf((alpha / 2) ** (1 / n))
    assert row.extra["limited_by"] == "selector" and row.sigma == 0.5
    assert row.radius == pytest.approx(float(np.float32(0.12)) * z, rel=1e-10) and row.radius < 0.12 * z


def test_selector_abstention_propagates():
    """A selector exactly on its decision boundary (P = 1/2 for both levels) abstains: so does the row,
    and the classifier is not consulted."""
    calls = []

    class Spy(Constant):
        def forward(self, x):
            calls.append(x.shape[0])
            return super().forward(x)

    method = method_with(Halfplane([0.0, 1.0], 0.5), (0.25, 0.5), 0.25)
    row = method.certify(Smooth(Spy(0, 2), 2, batch_size=100), torch.tensor([0.3, 0.5]).view(1, 1, 2), 50, 1000,
                         0.001, torch.Generator().manual_seed(0))
    assert (row.predict, row.radius, row.extra["limited_by"]) == (-1, 0.0, "selector")
    assert row.extra["radius_classifier"] == 0.0
    assert row.extra["pA_lower_selector"] < 0.5 and row.sigma in (0.25, 0.5) and calls == []


def test_classifier_abstention_propagates():
    """A confident selector but a classifier on its boundary: the row abstains with radius 0."""
    method = method_with(Constant(0, 2), (0.25, 0.5), 0.25)
    smooth = Smooth(Halfplane([1.0, 0.0], 0.5), 2, batch_size=500)
    row = method.certify(smooth, torch.tensor([0.5, 0.9]).view(1, 1, 2), 50, 1000, 0.001,
                         torch.Generator().manual_seed(0))
    assert (row.predict, row.radius, row.extra["limited_by"]) == (-1, 0.0, "classifier")
    assert row.extra["radius_selector"] > 0 and row.sigma == 0.25


# --------------------------------------------------------------------------------------------------
# The answer rule (README "Guarantees" 3f): the answer, not the level, is certified constant on the ball


def test_switch_and_answer_radii_closed_form():
    """e_k = sigma_sel (PhiInv(q_lo_s) - PhiInv(min(q_hi_k, 1 - q_lo_s))) / 2, e_s = inf, and
    R = min(r_s, min over k != s of max(e_k, r_k)) with the binding level, against scipy by hand."""
    switch = switch_radii(0.5, 1, 0.6, [0.35, 0.9, 0.05])
    assert switch[1] == math.inf
    assert switch[0] == pytest.approx(0.5 * (norm.ppf(0.6) - norm.ppf(0.35)) / 2, rel=1e-12)
    assert switch[2] == pytest.approx(0.5 * (norm.ppf(0.6) - norm.ppf(0.05)) / 2, rel=1e-12)
    # an upper bound above 1 - q_lo is tightened to it: e_k is then the selector's Cohen radius
    assert switch_radii(0.5, 0, 0.7, [1.0, 0.9])[1] == pytest.approx(0.5 * norm.ppf(0.7), rel=1e-12)
    assert switch_radii(0.5, 0, 0.0, [0.0, 0.0])[1] == -math.inf  # no bound at all: no switch radius
    assert answer_radius([math.inf, 0.1, 0.3], [0.5, 0.4, 0.0], 0) == (pytest.approx(0.3), 2)  # e_2 binds
    assert answer_radius([math.inf, 0.1, 0.3], [0.5, 0.2, 0.6], 0) == (pytest.approx(0.2), 1)  # r_1 binds
    assert answer_radius([math.inf, 0.9, 0.8], [0.5, 0.0, 0.0], 0) == (pytest.approx(0.5), 0)  # r_s binds
    assert answer_radius([math.inf, -0.1], [0.5, 0.0], 0)[0] <= 0  # a rival that may already be picked and
    # does not answer y: abstain


def answer_violations(method, classifier, selector, levels, sigma_sel, centers, rng, n=4000, alpha=0.01):
    """(certified rows, rows whose ball holds a point where the exact instance-wise classifier
    G(x') = g_{s(x')}(x') differs from the answer): s(x') is the exact smoothed selector's level."""
    smooth = Smooth(classifier, 2, batch_size=1000)
    certified = violated = 0
    for i, center in enumerate(centers):
        x = torch.tensor(center, dtype=torch.float32).view(1, 1, 2)
        row = method.certify(smooth, x, 100, n, alpha, torch.Generator().manual_seed(i))
        if row.predict == -1 or row.radius <= 0:
            continue
        certified += 1
        points = points_in_ball(center, row.radius, rng)
        level_index = (selector.p1(points, sigma_sel) > 0.5).astype(int)
        answer = np.where(level_index == 1, classifier.p1(points, levels[1]), classifier.p1(points, levels[0]))
        violated += int(((answer > 0.5).astype(int) != row.predict).any())
    return certified, violated


def hesitant_centers(rng, count=16):
    """Centres near the selector's boundary x2 = 0.5, half in the band's middle (where g_0.25 says 1 and
    g_0.5 says 0, so a switch of level changes the answer) and half beside it (both levels agree)."""
    middle = np.stack([rng.uniform(0.45, 0.55, count // 2), rng.uniform(0.44, 0.49, count // 2)], axis=1)
    beside = np.stack([rng.uniform(1.3, 1.6, count // 2), rng.uniform(0.45, 0.55, count // 2)], axis=1)
    return np.concatenate([middle, beside])


def test_answer_rule_keeps_the_instancewise_answer_in_the_ball():
    """Soundness on analytic models: inside every certified ball the exact instance-wise classifier answers
    the certified class, wherever the exact smoothed selector switches level."""
    levels, sigma_sel = (0.25, 0.5), 0.2
    selector, classifier = Halfplane([0.0, 1.0], 0.5), Band(0.5, 0.3)
    rng = np.random.default_rng(5)
    method = method_with(selector, levels, sigma_sel, rule="answer")
    certified, violated = answer_violations(method, classifier, selector, levels, sigma_sel, hesitant_centers(rng),
                                            rng)
    assert certified >= 8 and violated == 0


def test_answer_rule_check_catches_a_rule_that_ignores_the_switch(monkeypatch):
    """The same check fails a broken variant that certifies the chosen level's radius r_s alone (as if the
    selector could not switch to a level that answers otherwise)."""
    monkeypatch.setattr(selector_module, "answer_radius", lambda switch, radii, chosen: (radii[chosen], chosen))
    levels, sigma_sel = (0.25, 0.5), 0.2
    selector, classifier = Halfplane([0.0, 1.0], 0.5), Band(0.5, 0.3)
    rng = np.random.default_rng(5)
    method = method_with(selector, levels, sigma_sel, rule="answer")
    _, violated = answer_violations(method, classifier, selector, levels, sigma_sel, hesitant_centers(rng), rng)
    assert violated >= 3


def test_answer_rule_beats_the_level_rule_where_the_levels_agree():
    """Beside the band both levels answer 0: a selector on its boundary makes the level rule abstain or certify
    a tiny R_sel, while the answer rule certifies the smaller of the two levels' radii."""
    levels, sigma_sel = (0.25, 0.5), 0.2
    selector, classifier = Halfplane([0.0, 1.0], 0.5), Band(0.5, 0.3)
    smooth = Smooth(classifier, 2, batch_size=1000)
    x = torch.tensor([1.5, 0.5]).view(1, 1, 2)
    rows = {rule: method_with(selector, levels, sigma_sel, rule=rule).certify(smooth, x, 100, 4000, 0.001,
                                                                              torch.Generator().manual_seed(0))
            for rule in ("level", "answer")}
    assert rows["level"].radius < 0.05
    exact = min(s * norm.ppf(1 - classifier.p1(np.array([[1.5, 0.5]]), s)[0]) for s in levels)
    assert rows["answer"].predict == 0 and 0.6 * exact < rows["answer"].radius <= exact
    assert rows["answer"].extra["levels_certified"] == 2 and rows["answer"].extra["limited_by"] in ("classifier",
                                                                                                    "rival")


def test_answer_rule_alpha_split_closed_form():
    """Deterministic selector and classifier: the selector's K bounds at selector_alpha * alpha / K, the
    classifier's at the rest / K; a sure selector sets e_k to its own Cohen radius and no rival is sampled."""
    alpha, n0, n, sel_n, share = 0.02, 20, 500, 300, 0.25
    levels = (0.1, 0.3, 1.0)
    method = method_with(Constant(1, 3), levels, 2.0, selector_n=sel_n, rule="answer", selector_alpha=share)
    row = method.certify(Smooth(Constant(2, 3), 3, batch_size=256), torch.zeros(1, 4, 4), n0, n, alpha,
                         torch.Generator().manual_seed(0))
    q_lower = (alpha * share / 3) ** (1 / sel_n)
    p_lower = (alpha * (1 - share) / 3) ** (1 / n)
    assert row.predict == 2 and row.sigma == 0.3
    assert row.extra["pA_lower_selector"] == pytest.approx(q_lower, abs=2e-6)
    assert row.p_lower == pytest.approx(p_lower, rel=1e-9)
    assert row.radius == pytest.approx(float(np.float32(0.3)) * norm.ppf(p_lower), rel=1e-9)
    assert row.extra["radius_selector"] == pytest.approx(2.0 * norm.ppf(q_lower), abs=2e-6)
    assert row.extra["levels_certified"] == 1 and row.extra["limited_by"] == "classifier"


@pytest.mark.parametrize("settings, message", [({"rule": "levels"}, "rule='levels' is invalid"),
                                               ({"selector_alpha": 1.0}, "selector_alpha=1.0 is invalid")])
def test_bad_rule_settings_are_one_line_config_errors(settings, message):
    with pytest.raises(ConfigError, match=message):
        SelectorSigma(ckpt_path="unused.pt", **settings)


# --------------------------------------------------------------------------------------------------
# Labels


def test_nearest_level_in_log_space():
    levels = [1.0, 0.12, 0.5, 0.25]  # any order; level k is the k-th smallest
    sigmas = torch.tensor([0.05, 0.12, 0.17, 0.18, 0.35, 0.36, 0.7, 0.71, 5.0])
    # independent answer: the boundaries between neighbours are their geometric means
    sorted_levels = np.sort(levels)
    cuts = np.sqrt(sorted_levels[:-1] * sorted_levels[1:])  # 0.1732, 0.3536, 0.7071
    expected = np.searchsorted(cuts, sigmas.numpy(), side="left")
    assert nearest_level_labels(sigmas, levels).tolist() == expected.tolist() == [0, 0, 0, 1, 1, 2, 2, 3, 3]


@pytest.mark.parametrize("levels", [[], [0.25, -0.5], [0.0], [0.25, 0.25], "0.25", [float("nan")]])
def test_bad_levels_are_one_line_config_errors(levels):
    with pytest.raises(ConfigError, match=r"^levels=.*expected a non-empty list") as err:
        check_levels(levels)
    assert "\n" not in str(err.value)


class Sign(nn.Module):
    """Class 1 if the single pixel is > 0: at +100 / -100 no noise level up to 1 ever flips it."""

    def forward(self, x):
        v = x.flatten(1)[:, 0]
        return torch.stack([-v, v], dim=1)


@pytest.mark.parametrize("soft", [True, False])
def test_best_radius_labels_on_a_fake_model(soft):
    """Example 0 is always right (phat = 1 at every level), example 1 always wrong (phat = 0): the targets
    are softmax(sigma_k PhiInv(clamp(phat)) / T), or one-hot at the largest / smallest level."""
    levels, draws, temperature = [0.12, 0.25, 0.5, 1.0], 16, 0.2
    split = [(torch.full((1, 1, 1), 100.0), 1, 0), (torch.full((1, 1, 1), -100.0), 1, 1)]
    table = {"idx": torch.tensor([0, 1]), "label": torch.tensor([1, 1]), "sigma": torch.tensor([0.3, 0.3])}
    settings = SelectorSettings(levels=levels, label_mode="best_radius", draws=draws, soft_labels=soft,
                                temperature=temperature)
    targets = selector_targets(settings, table, split, Sign(), 2, torch.Generator().manual_seed(0))
    eps = 1 / (2 * draws)
    radii = np.array([[s * norm.ppf(1 - eps) for s in levels], [s * norm.ppf(eps) for s in levels]])
    if soft:
        expected = np.exp(radii / temperature) / np.exp(radii / temperature).sum(axis=1, keepdims=True)
        np.testing.assert_allclose(targets.numpy(), expected, rtol=1e-5, atol=1e-7)
    else:
        assert targets.argmax(dim=1).tolist() == [3, 0] and targets.sum().item() == 2
    # nearest ignores the model: 0.3 is below the geometric mean 0.354 of 0.25 and 0.5
    assert selector_targets(SelectorSettings(levels=levels, label_mode="nearest"), table).tolist() == [1, 1]


# --------------------------------------------------------------------------------------------------
# A tiny fake base run: a SmallCNN trained one epoch on synthetic data, and a fake train_sigma.pt


DATASET = {"_target_": "insta_rs.data.Synthetic", "num_classes": 3, "input_shape": [1, 8, 8], "train_size": 96,
           "val_size": 16, "test_size": 16, "seed": 0, "noise": 0.1}
MODEL = {"_target_": "insta_rs.models.SmallCNN", "width": 8, "hidden": 16}


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("insta_run")
    pl.seed_everything(0, verbose=False)
    source = Synthetic(**{k: v for k, v in DATASET.items() if k != "_target_"})
    info = source.info
    model = SmallCNN(num_classes=3, input_shape=info.input_shape, mean=info.mean, std=info.std, width=8, hidden=16)
    settings = TrainSettings(sigma=0.25, epochs=1, batch_size=32, lr=0.05)
    config = {"dataset": DATASET, "model": MODEL, "train": dataclasses.asdict(settings), "seed": 0}
    module = SmoothingClassifier(model, 3, settings, config=config, dataset_info=dataclasses.asdict(info))
    split = source.split("train")
    loader = torch.utils.data.DataLoader(split, batch_size=32, shuffle=True)
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(run_dir))
    trainer.fit(module, train_dataloaders=loader)
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    trainer.save_checkpoint(ckpt)
    rng = np.random.default_rng(0)
    torch.save({"idx": torch.arange(len(split)), "sigma": torch.tensor(rng.choice([0.1, 0.2, 0.4, 0.9], len(split)),
                                                                       dtype=torch.float32),
                "label": torch.tensor(split.targets), "config": config}, run_dir / "train_sigma.pt")
    return ckpt, source


@pytest.mark.parametrize("label_mode", ["best_radius", "nearest"])
def test_fit_selector_then_certify(base_run, tmp_path, label_mode):
    ckpt, source = base_run
    levels = [0.5, 0.12, 0.25]
    settings = SelectorSettings(levels=levels, sigma=0.25, label_mode=label_mode, epochs=1, lr=0.05, batch_size=32,
                                draws=4, width=4, hidden=8)
    path = fit_selector(load_run(ckpt), settings, run_dir=tmp_path, seed=0)
    assert path == tmp_path / "selector.pt"
    network, record = load_selector(path)
    assert record["levels"] == [0.12, 0.25, 0.5] and record["sigma"] == 0.25 and record["label_mode"] == label_mode
    assert record["base_sha256"] == file_digest(ckpt) and record["base_ckpt"] == str(ckpt.resolve())
    assert sum(record["label_counts"]) == 96 and network(torch.rand(2, 1, 8, 8)).shape == (2, 3)
    if label_mode == "nearest":  # the fake table's sigmas 0.1, 0.2, 0.4, 0.9 round to levels 0, 1, 2, 2
        table = torch.load(ckpt.parent.parent / "train_sigma.pt", weights_only=True)
        expected = np.bincount(nearest_level_labels(table["sigma"], levels).numpy(), minlength=3).tolist()
        assert record["label_counts"] == expected

    method = SelectorSigma(ckpt_path=str(path))
    method.prepare(SearchContext(source=source, num_classes=3, device="cpu", ckpt_path=str(ckpt)))
    smooth = Smooth(load_run(ckpt).model, 3, batch_size=64)
    test = source.split("test")
    for i in range(3):
        row = method.certify(smooth, test[i][0], 10, 60, 0.01, torch.Generator().manual_seed(i))
        assert row.guarantee == "sound" and row.sigma in (0.12, 0.25, 0.5)
        assert row.sigma == record["levels"][row.extra["level"]] and row.predict in (-1, 0, 1, 2)
        assert row.radius == pytest.approx(min(row.extra["radius_selector"], row.extra["radius_classifier"]),
                                           abs=1e-6) or row.predict == -1
        assert row.search_draws == 70
    assert method.extra_columns == ("level", "radius_selector", "radius_classifier", "pA_lower_selector", "limited_by")

    report = distillation_check_files(path, ckpt, split="test", max_inputs=4, selector_draws=16, search_draws=16)
    assert report["inputs"] == 4 and 0.0 <= report["agreement"] <= 1.0 and report["mean_cost"] >= 0
    assert report["per_level"]["best_picks"].sum() == 4 and report["per_level"]["selector_picks"].sum() == 4


def test_low_pass_consistency_selector_round_trip(base_run, tmp_path):
    """A selector with the noise levers (2x2 block means, consistency training, the answer rule) trains,
    saves, loads with the same weights and filter, and certifies through the answer rule."""
    ckpt, source = base_run
    settings = SelectorSettings(levels=[0.12, 0.25, 0.5], sigma=0.5, epochs=1, batch_size=32, draws=4, width=4,
                                hidden=8, pool=2, consistency=40.0, eta=0.5)
    torch.manual_seed(0)
    path = fit_selector(load_run(ckpt), settings, run_dir=tmp_path, seed=0)
    network, record = load_selector(path)
    assert record["network"]["pool"] == 2 and record["settings"]["consistency"] == 40.0
    assert isinstance(network[0], BlockAverage) and network[0].k == 2
    saved = torch.load(path, weights_only=True)["state_dict"]
    assert all(torch.equal(saved[k], v) for k, v in network.state_dict().items())
    method = SelectorSigma(ckpt_path=str(path), rule="answer")
    method.prepare(SearchContext(source=source, num_classes=3, device="cpu", ckpt_path=str(ckpt)))
    smooth = Smooth(load_run(ckpt).model, 3, batch_size=64)
    for i in range(3):
        row = method.certify(smooth, source.split("test")[i][0], 10, 60, 0.01, torch.Generator().manual_seed(i))
        assert row.guarantee == "sound" and 1 <= row.extra["levels_certified"] <= 3
        assert row.radius <= row.extra["radius_classifier"] + 1e-6  # the column is rounded down
    assert method.extra_columns[-1] == "levels_certified"
    with pytest.raises(ConfigError, match="pool=3 is invalid"):
        fit_selector(load_run(ckpt), dataclasses.replace(settings, pool=3), run_dir=tmp_path / "bad", seed=0)


def test_block_average_is_the_block_mean_and_divides_the_noise():
    """Every k x k block becomes its mean, the shape is kept, and on pure noise the standard deviation falls
    from sigma to sigma / k."""
    x = torch.arange(16.0).view(1, 1, 4, 4)
    out = BlockAverage(2)(x)
    assert out.shape == x.shape and out[0, 0, 0, 0] == (0 + 1 + 4 + 5) / 4 and out[0, 0, 3, 3] == (10 + 11 + 14 + 15) / 4
    noise = 0.5 * torch.randn(4000, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    assert BlockAverage(4)(noise).std().item() == pytest.approx(0.5 / 4, rel=0.03)
    assert torch.equal(BlockAverage(1)(x), x)


def test_selector_for_another_checkpoint_is_refused(tmp_path):
    """prepare() compares the SHA-256 the selector recorded with the classifier being certified."""
    base, other = tmp_path / "base.ckpt", tmp_path / "other.ckpt"
    base.write_bytes(b"the base classifier")
    other.write_bytes(b"another classifier")
    network = build_selector_network(2, (1, 4, 4), (0.5,), (0.25,), width=2, hidden=4)
    record = {"format": 1, "levels": [0.25, 0.5], "sigma": 0.25, "label_mode": "nearest", "base_ckpt": str(base),
              "base_sha256": file_digest(base),
              "dataset_info": {"input_shape": [1, 4, 4], "mean": [0.5], "std": [0.25]},
              "network": {"name": "small_cnn", "width": 2, "hidden": 4}}
    save_selector(tmp_path / "selector.pt", network, record)
    method = SelectorSigma(ckpt_path=str(tmp_path / "selector.pt"))
    with pytest.raises(CheckpointError, match="was trained for the classifier") as err:
        method.prepare(SearchContext(ckpt_path=str(other)))
    assert "\n" not in str(err.value) and "train=selector" in str(err.value)
    method.prepare(SearchContext(ckpt_path=str(base)))  # the right classifier is accepted
    assert method.levels == (0.25, 0.5) and method.sigma == 0.25
    with pytest.raises(CheckpointError, match="does not exist"):
        SelectorSigma(ckpt_path=str(tmp_path / "missing.pt")).prepare(SearchContext(ckpt_path=str(base)))


def _train_module():
    """train.py as a module (its ``prepare_selector``), imported from the project root."""
    sys.path.insert(0, str(ROOT))
    try:
        import train
    finally:
        sys.path.remove(str(ROOT))
    return train


def test_resume_identity_pins_the_selector_file(tmp_path):
    """A resumed certification must not mix in a selector retrained at the same path: the method's resume
    identity is the file's SHA-256, and it changes when the file is rewritten."""
    record = {"format": 1, "levels": [0.25, 0.5], "sigma": 0.25, "label_mode": "nearest", "base_ckpt": "b",
              "base_sha256": "0" * 64, "dataset_info": {"input_shape": [1, 4, 4], "mean": [0.5], "std": [0.25]},
              "network": {"name": "small_cnn", "width": 2, "hidden": 4}}
    path = tmp_path / "selector.pt"
    torch.manual_seed(0)
    save_selector(path, build_selector_network(2, (1, 4, 4), (0.5,), (0.25,), width=2, hidden=4), record)
    method = SelectorSigma(ckpt_path=str(path))
    first = method.resume_identity()
    assert first == {"selector_sha256": file_digest(path)}
    torch.manual_seed(1)  # retrained: other weights, same path
    save_selector(path, build_selector_network(2, (1, 4, 4), (0.5,), (0.25,), width=2, hidden=4), record)
    assert method.resume_identity() != first


def test_fit_selector_errors(base_run, tmp_path, compose):
    ckpt, _ = base_run
    cfg = compose("train", ["train=selector", f"base_ckpt={tmp_path / 'nope.ckpt'}", "logger=none"])
    with pytest.raises(CheckpointError, match=r"base_ckpt=.*does not exist") as err:
        _train_module().prepare_selector(cfg)  # train.py's checks, before the run folder exists
    assert "\n" not in str(err.value) and err.value.exit_code == 2  # a setting that names no file
    lonely = tmp_path / "run" / "checkpoints"
    lonely.mkdir(parents=True)
    shutil.copy(ckpt, lonely / "last.ckpt")
    with pytest.raises(CheckpointError, match=r"no train_sigma\.pt .* train the base with train=insta_rs") as err:
        fit_selector(load_run(lonely / "last.ckpt"), SelectorSettings(levels=[0.25, 0.5], label_mode="nearest"),
                     run_dir=tmp_path)
    assert "\n" not in str(err.value)
    for levels in ([], [0.25, 0.0]):
        with pytest.raises(ConfigError, match="^levels="):
            SelectorSettings(levels=levels, label_mode="nearest")
    with pytest.raises(ConfigError, match="^label_mode="):
        SelectorSettings(levels=[0.25], label_mode="rounded")


def test_configs_compose_into_selector_settings(compose):
    from omegaconf import OmegaConf

    cfg = compose("train", ["train=selector", "base_ckpt=x.ckpt", "selector.levels=[0.5,0.25]"])
    settings = SelectorSettings.from_dict(OmegaConf.to_container(cfg.selector, resolve=True))
    assert settings.levels == [0.25, 0.5] and cfg.base_ckpt == "x.ckpt" and cfg.trainer.max_epochs == settings.epochs
    assert SelectorSettings.from_dict(OmegaConf.to_container(compose("train", ["train=selector"]).selector)) == \
        SelectorSettings()  # conf/selector/default.yaml and the dataclass hold the same defaults
    assert "train" not in cfg  # no fake train.method: train.py dispatches on the selector node
    with pytest.raises(ConfigError, match="selector.widht is not a selector setting"):
        SelectorSettings.from_dict({"widht": 3})
    cfg = compose("certify", ["ckpt_path=x.ckpt", "sigma_search=selector", "sigma_search.ckpt_path=s.pt"])
    from hydra.utils import instantiate

    method = instantiate(cfg.sigma_search)
    assert isinstance(method, SelectorSigma) and method.name == "selector" and method.guarantee == "sound"


@pytest.mark.slow
def test_certify_script_with_selector(trained_digits, tmp_path):
    """The real ``train.py train=selector`` on a train.py checkpoint (a fake sigma table beside it), then the real
    certify.py with sigma_search=selector: rows carry guarantee=sound, the selector's columns, sigma = a level,
    radius = min of the two radii."""
    from conftest import run_script
    from insta_rs import analysis
    from insta_rs.checkpoints import read_checkpoint

    base = tmp_path / "base"
    (base / "checkpoints").mkdir(parents=True)
    ckpt = base / "checkpoints" / "last.ckpt"
    shutil.copy(trained_digits / "checkpoints" / "last.ckpt", ckpt)
    config = read_checkpoint(ckpt)["insta_rs"]["config"]
    split = load_run(ckpt).source.split("train")
    torch.save({"idx": torch.arange(len(split)), "sigma": torch.full((len(split),), 0.25),
                "label": torch.tensor(split.targets), "config": config}, base / "train_sigma.pt")
    run_script("train.py", "train=selector", f"base_ckpt={ckpt}", "selector.levels=[0.12,0.25,0.5]",
               "selector.epochs=1", "selector.draws=4", "selector.width=4", "selector.hidden=8", "logger=none",
               f"hydra.run.dir={tmp_path / 'sel'}")  # the command line of README and the Makefile
    selector = tmp_path / "sel" / "selector.pt"
    assert load_selector(selector)[1]["base_sha256"] == file_digest(ckpt)
    out = tmp_path / "cert"
    run_script("certify.py", f"ckpt_path={ckpt}", "sigma_search=selector", f"sigma_search.ckpt_path={selector}",
               "certify=fast", "certify.max=3", "certify.progress=false", "logger=none", f"hydra.run.dir={out}")
    rows = analysis.read_certification(out / "certify.tsv")
    assert len(rows) == 3 and set(rows["guarantee"]) == {"sound"}
    assert set(rows["sigma"]).issubset({0.12, 0.25, 0.5})
    for _, row in rows.iterrows():
        if row["predict"] != -1:
            assert row["radius"] <= min(row["radius_selector"], row["radius_classifier"]) + 1e-6
    answer = tmp_path / "cert_answer"
    run_script("certify.py", f"ckpt_path={ckpt}", "sigma_search=selector", f"sigma_search.ckpt_path={selector}",
               "sigma_search.rule=answer", "sigma_search.selector_alpha=0.25", "certify=fast", "certify.max=3",
               "certify.progress=false", "logger=none", f"hydra.run.dir={answer}")
    rows = analysis.read_certification(answer / "certify.tsv")
    assert len(rows) == 3 and set(rows["guarantee"]) == {"sound"} and rows["levels_certified"].between(1, 3).all()
    assert (rows["radius"] <= rows["radius_classifier"] + 1e-6).all()
    refused = run_script("certify.py", f"ckpt_path={ckpt}", "sigma_search=selector",
                         f"sigma_search.ckpt_path={selector}", "sigma_search.rule=answer", "certify=fast",
                         "certify.sampling=sequential", "certify.max=1", "logger=none",
                         f"hydra.run.dir={tmp_path / 'refused'}", check=False)
    assert refused.returncode == 2 and "certify.sampling=fixed" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1 and not (tmp_path / "refused").exists()
    result = run_script("certify.py", f"ckpt_path={ckpt}", "sigma_search=selector",
                        f"sigma_search.ckpt_path={tmp_path / 'missing.pt'}", "certify=fast", "certify.max=1",
                        "logger=none", f"hydra.run.dir={tmp_path / 'bad'}", check=False)
    assert result.returncode == 2 and "does not exist" in result.stderr  # a setting that names no file


def test_unreached_inputs_and_level_balance():
    radii = torch.tensor([[0.3, -0.1], [-0.2, -0.4], [0.0, 0.0], [-1.0, 0.2]], dtype=torch.float64)
    assert reached(radii).tolist() == [True, False, False, True]  # a radius of exactly 0 is not reached
    targets = torch.tensor([0, 0, 0, 1])
    weights = level_balance_weights(targets, 3)
    assert weights.tolist() == pytest.approx([1 / 3, 1 / 3, 1 / 3, 1.0])
    # soft rows weigh by their argmax; each level present ends with total weight 1
    soft = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.4, 0.6]])
    assert level_balance_weights(soft, 2).tolist() == pytest.approx([1.0, 0.5, 0.5])
    with pytest.raises(ConfigError, match="drop_unreached"):
        SelectorSettings(label_mode="nearest", drop_unreached=True)
    with pytest.raises(ConfigError, match="balance_levels"):
        SelectorSettings(balance_levels="yes")


def test_fit_selector_without_unreached_inputs_and_balanced(base_run, tmp_path, monkeypatch):
    """With drop_unreached the selector trains on the inputs some level reaches only (its record counts
    them); with balance_levels it draws them through a weighted sampler; the file certifies as usual."""
    ckpt, source = base_run
    settings = SelectorSettings(levels=[0.12, 0.25, 1.0], sigma=0.25, epochs=1, batch_size=32, draws=4, width=4,
                                hidden=8, drop_unreached=True, balance_levels=True)
    samplers = []
    real_loader = selector_training.DataLoader

    def spy(*args, **kwargs):
        samplers.append(kwargs.get("sampler"))
        return real_loader(*args, **kwargs)

    monkeypatch.setattr(selector_training, "DataLoader", spy)
    base = load_run(ckpt)
    split, table, targets = selector_training.base_targets(base, settings, seed=0)
    path = fit_selector(load_run(ckpt), settings, run_dir=tmp_path, seed=0)
    _, record = load_selector(path)
    kept = len(table["idx"])
    assert 1 <= kept <= 96 and sum(record["label_counts"]) == kept == len(targets)
    assert record["settings"]["drop_unreached"] is True
    assert isinstance(samplers[-1], WeightedRandomSampler)
    # the same seed's radii over all 96 inputs: the kept ones are exactly those some level reaches (the one-epoch
    # base model misses many, so dropping them is visible)
    full = selector_training.base_targets(base, dataclasses.replace(settings, drop_unreached=False), seed=0)[1]
    radii = selector_radii(settings, full, split, base.model, 3, torch.Generator().manual_seed(0))
    assert len(full["idx"]) == 96 and kept < 96
    assert table["idx"].tolist() == full["idx"][reached(radii)].tolist()
    method = SelectorSigma(ckpt_path=str(path))
    method.prepare(SearchContext(source=source, num_classes=3, device="cpu", ckpt_path=str(ckpt)))
    row = method.certify(Smooth(base.model, 3, batch_size=64), source.split("test")[0][0], 10, 60, 0.01,
                         torch.Generator().manual_seed(0))
    assert row.guarantee == "sound" and row.sigma in (0.12, 0.25, 1.0)
