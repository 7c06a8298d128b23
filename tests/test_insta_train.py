"""Insta-RS Train (ALGORITHMS.md 4; docs/insta_rs_train.md): the phase schedule, the search update rule (by
hand, and through a fake model whose probabilities of being right have a closed form), the probe rule (by hand,
and on a toy of two clusters whose best sigmas are known), the forward passes a stage-2 step costs under each
rule, stage 1 across sigmas, the table in checkpoints and on resume (a probe-rule run interrupted in stage 2 and
resumed ends like an uninterrupted one), train_sigma.pt, the loggers, refusal of a checkpoint from another
config, two simulated ranks of the search rule, and two DDP ranks (CPU, gloo) of the probe rule that draw
different noise and hold the table the gathered signals imply."""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
import pytest
import pytorch_lightning as pl
import torch
from scipy.stats import norm

from conftest import ROOT, run_script
from insta_rs import sigma_table as rules
from insta_rs.errors import CheckpointError, ConfigError
from insta_rs.training import InstaRSSettings, SmoothingClassifier, TrainSettings, check_resumable

E = math.exp(0.1)

SETTINGS = dict(sigma=0.25, sigma0=0.25, epochs=4, stage1_epochs=2, eta=0.1, sigma_min=0.05, sigma_max=1.0,
                m_update=16)


def test_phase_switches_at_stage1_epochs():
    s = InstaRSSettings(**SETTINGS)
    assert [s.phase_at(e) for e in range(4)] == ["gaussian", "gaussian", "instance", "instance"]
    assert InstaRSSettings(**{**SETTINGS, "stage1_epochs": 0}).phase_at(0) == "instance"
    assert TrainSettings().phase_at(100) == "gaussian"
    assert InstaRSSettings(sigma0=0.5).sigma == 0.5  # stage 1 runs at sigma0 unless told otherwise


@pytest.mark.parametrize("change,setting", [
    ({"stage1_epochs": 4}, "stage1_epochs"),      # stage 1 must leave room for stage 2
    ({"stage1_epochs": -1}, "stage1_epochs"),
    ({"sigma_min": 1.5}, "sigma_max"),             # sigma_min > sigma_max
    ({"sigma0": 3.0, "sigma": 3.0}, "sigma0"),     # sigma0 above the bounds
    ({"sigma0": 0.01, "sigma": 0.01}, "sigma0"),   # sigma0 below the bounds
    ({"sigma_min": 0.0}, "sigma_min"),
    ({"eta": 0.0}, "eta"),
    ({"eta": -0.1}, "eta"),
    ({"m_update": 0}, "m_update"),
    ({"update_every": 0}, "update_every"),
    ({"sigma": 0.5}, "sigma"),                     # stage 1 runs at sigma0
    ({"update_rule": "fast"}, "update_rule"),
    ({"probe_signal": "margin"}, "probe_signal"),
    ({"probe_memory": 1}, "probe_memory"),         # one visit per side: every estimate clamps to 1/2
    ({"stage1_sigma": "uniform"}, "stage1_sigma"),
    ({"stage1_sigma": []}, "stage1_sigma"),
    ({"stage1_sigma": [0.25, -1.0]}, "stage1_sigma"),
    ({"init": "grid"}, "init"),
    ({"init_levels": 1}, "init_levels"),
    ({"init_draws": 0}, "init_draws"),
])
def test_bad_settings_are_one_line_config_errors_naming_the_setting(change, setting):
    with pytest.raises(ConfigError, match="^" + re.escape(setting) + "=") as error:  # the field; train.py adds the group
        InstaRSSettings(**{**SETTINGS, **change})
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("override,key", [("train.sigma_typo=0.5", "sigma_typo"), ("train.m_update=many", "m_update"),
                                          ("train.loss.lbd=2", "lbd")])
def test_the_train_schema_rejects_unknown_keys_and_wrong_types(compose, override, key):
    """train/base_insta_rs (the settings dataclass) is the group's schema: OmegaConf refuses at composition a
    key it lacks (the gaussian loss has no lbd) or a value of the wrong type."""
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException) as error:
        compose("train", ["train=insta_rs", override])
    assert key in str(error.value) + str(error.value.__cause__)


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
    # the current sigma wins a tie: Rhat = 0.2 at all three candidates
    tie = torch.tensor([[0.5 / e, 0.5, 0.5 * e]])
    p_tie = torch.tensor(norm.cdf(0.2 / tie.numpy()), dtype=torch.float32)
    assert rules.choose_sigmas(tie, p_tie, 0.1, 0.05, 1.0, m=10**6)[0] == pytest.approx(0.5, rel=1e-6)


class KnownProbabilities(torch.nn.Module):
    """A fake classifier of inputs x = (0, 100 k): it predicts the label 1 iff the noisy first coordinate
    s e_0 satisfies lo_k <= |s e_0| < hi_k, so P(correct | s) = 2 (Phi(hi_k / s) - Phi(lo_k / s)) exactly.
    The second coordinate selects the scenario k (noise of sd <= 1 cannot move it by 50)."""

    SETS = [(0.0, 0.5), (0.05, math.inf), (0.0, 0.2), (0.0, math.inf)]

    def __init__(self):
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(1))

    @classmethod
    def p_correct(cls, k: int, s):
        lo, hi = cls.SETS[k]
        return 2 * (norm.cdf(hi / np.asarray(s)) - norm.cdf(lo / np.asarray(s)))

    def forward(self, x):
        k = torch.round(x[:, 1] / 100).long()
        lo = torch.tensor([a for a, _ in self.SETS])[k]
        hi = torch.tensor([b for _, b in self.SETS])[k]
        inside = (x[:, 0].abs() >= lo) & (x[:, 0].abs() < hi)
        return torch.stack([(~inside).float(), inside.float()], dim=1) * 5 + self.unused


def test_update_through_a_model_of_known_probabilities():
    """Four rows at known sigmas: the update must pick what scipy's closed form picks. Scenario 0 moves down,
    1 moves up, 2 moves down and shrinks (phat_y(sigma) < 1/2), 3 is always right: the largest candidate,
    clipped at sigma_max. The margins between scores are > 6 standard errors of the m = 20000 draw estimate."""
    m = 20000
    settings = InstaRSSettings(**{**SETTINGS, "m_update": m, "sigma0": 0.5, "sigma": 0.5})
    module = SmoothingClassifier(KnownProbabilities(), 2, settings, num_train=10)
    table = module.sigma_table
    idx = torch.tensor([2, 5, 7, 9])
    table.sigma[9] = 0.95
    x = torch.stack([torch.zeros(4), 100.0 * torch.arange(4)], dim=1)
    y = torch.ones(4, dtype=torch.long)
    torch.manual_seed(0)
    model_training_before = module.model.training
    table.update(module.model, x, y, idx)
    assert module.model.training == model_training_before

    e = math.exp(0.1)
    expected = []
    for k, s in enumerate([0.5, 0.5, 0.5, 0.95]):
        cands = np.clip([s / e, s, s * e], 0.05, 1.0)
        p = KnownProbabilities.p_correct(k, cands)
        scores = cands * norm.ppf(np.clip(p, 0.5 / m, 1 - 0.5 / m))
        top = np.sort(scores)[::-1]
        assert k == 3 or top[0] - top[1] > 6 * 0.5 * math.sqrt(0.25 / m) / norm.pdf(norm.ppf(0.75)), k
        new = cands[scores.argmax()] * (1 / e if p[1] < 0.5 else 1.0)
        expected.append(float(np.clip(new, 0.05, 1.0)))
    np.testing.assert_allclose(table[idx].numpy(), expected, rtol=1e-5)
    assert expected[0] < 0.5 < expected[1] and expected[2] < expected[0] and expected[3] == 1.0
    # the estimator itself against the closed form (within 5 binomial standard errors)
    cands = rules.candidate_sigmas(torch.tensor([0.5, 0.5, 0.5, 0.95]), 0.1, 0.05, 1.0)
    phat = rules.estimate_p_correct(module.model, x, y, cands, m).numpy()
    exact = np.stack([KnownProbabilities.p_correct(k, cands[k].numpy()) for k in range(4)])
    assert np.all(np.abs(phat - exact) <= 5 * np.sqrt(exact * (1 - exact) / m) + 1e-9)
    # unvisited rows are untouched; labels and difficulty (phat_y(sigma0) at the first visit) recorded
    assert torch.all(table[[0, 1, 3]] == 0.5) and table.label[0] == -1
    assert table.label[idx].tolist() == [1, 1, 1, 1]
    np.testing.assert_allclose(table.difficulty[idx[:3]].numpy(), exact[:3, 1], atol=0.02)


class ConstantClass(torch.nn.Module):
    """Predicts class 0 whatever the input: an example labelled 1 is always misclassified."""

    def __init__(self):
        super().__init__()
        self.bias = torch.nn.Parameter(torch.zeros(2))

    def forward(self, x):
        return torch.tensor([5.0, 0.0]).expand(x.shape[0], 2) + self.bias


def test_always_misclassified_example_shrinks_and_correct_one_grows():
    model = ConstantClass()
    table = InstaRSSettings(**SETTINGS).sigma_table(10)
    x = torch.rand(2, 1, 4, 4)
    y, idx = torch.tensor([1, 0]), torch.tensor([3, 7])
    for _ in range(3):
        table.update(model, x, y, idx)
    e = np.exp(0.1)
    assert table[3] == pytest.approx(0.25 / e ** 6, rel=1e-5)  # two steps down per update
    assert table[7] == pytest.approx(0.25 * e ** 3, rel=1e-5)  # always right: the largest sigma
    assert table.label[3] == 1 and table.label[7] == 0 and table.label[0] == -1
    assert table.difficulty[3] == 0.0 and table.difficulty[7] == 1.0  # the first estimate at sigma0
    for _ in range(40):
        table.update(model, x, y, idx)
    assert table[3] == pytest.approx(0.05) and table[7] == pytest.approx(1.0)  # clipped


def test_update_every_k_th_step_and_table_state_round_trip():
    """update_every=2: steps 0, 2, 4 update their batch, steps 1, 3 do not; state_dict/load_state_dict carry
    the tensors and the step counter, and refuse a table of another length."""
    table = InstaRSSettings(**{**SETTINGS, "update_every": 2}).sigma_table(10)
    x, y = torch.rand(1, 1, 4, 4), torch.tensor([1])
    for step in range(5):
        table.step(ConstantClass(), x, y, torch.tensor([step]))
    assert table.label.tolist()[:5] == [1, -1, 1, -1, 1] and table.visits == 5
    copy = InstaRSSettings(**SETTINGS).sigma_table(10)
    copy.load_state_dict(table.state_dict())
    assert torch.equal(copy.sigma, table.sigma) and torch.equal(copy.label, table.label) and copy.visits == 5
    with pytest.raises(ValueError):
        InstaRSSettings(**SETTINGS).sigma_table(11).load_state_dict(table.state_dict())


def test_duplicate_indices_keep_the_lowest_ranks_value():
    indices = torch.tensor([4, 2, 9, 2, 4, 5])
    assert rules.first_occurrence(indices).tolist() == [True, True, True, False, False, True]


# ------------------------------------------------------------------ the probe rule ---------------------------------

def probe_table(size: int, memory: int = 4, signal: str = "prob", **changes) -> rules.ProbeSigmaTable:
    settings = InstaRSSettings(**{**SETTINGS, "update_rule": "probe", "probe_memory": memory, "probe_signal": signal,
                                  **changes})
    table = settings.sigma_table(size)
    assert type(table) is rules.ProbeSigmaTable
    return table


def test_probe_rule_by_hand():
    """No move until both sides are seen; then down when the two means average below 1/2, else toward the larger
    s * PhiInv(clamp(mean, 1/(2 memory), 1 - 1/(2 memory))) (scipy), one step, clipped."""
    table = probe_table(6, memory=4)
    table.sigma[4] = 1.0  # at sigma_max: the up side is sigma_max itself
    idx = torch.arange(5)
    down = torch.tensor([0.99, 0.99, 0.40, 0.55, 0.99])
    up = torch.tensor([0.99, 0.60, 0.30, 0.30, 0.99])
    labels = torch.tensor([1, 2, 0, 1, 2])
    table.apply_probe(idx, torch.zeros(5, dtype=torch.long), down, labels)
    assert torch.all(table.sigma[:4] == 0.25) and table.sigma[4] == 1.0  # one side seen: no move
    assert table.probe_side[:5].tolist() == [0] * 5 and table.probe_side[5] == -1
    torch.testing.assert_close(table.difficulty[:5], down)  # the first visit's signal
    assert table.label[:5].tolist() == labels.tolist() and table.label[5] == -1
    table.apply_probe(idx, torch.ones(5, dtype=torch.long), up, labels)
    sigma = np.array([0.25, 0.25, 0.25, 0.25, 1.0])
    sides = np.clip(np.stack([sigma / E, sigma * E], 1), 0.05, 1.0)
    score = sides * norm.ppf(np.clip(np.stack([down, up], 1), 1 / 8, 7 / 8))
    wrong = (down.numpy() + up.numpy()) / 2 < 0.5
    expected = np.where(wrong | (score[:, 0] > score[:, 1]), sides[:, 0], sides[:, 1])
    np.testing.assert_allclose(table.sigma[:5].numpy(), expected, rtol=1e-6)
    # row 0: both clamp at 7/8, the larger sigma wins; row 1: 0.6 at the upper side is worse; rows 2, 3 are
    # below 1/2 at sigma (row 3 would otherwise go down too: its lower side is positive); row 4 stays at the bound
    np.testing.assert_allclose(table.sigma[:5].numpy(), [0.25 * E, 0.25 / E, 0.25 / E, 0.25 / E, 1.0], rtol=1e-6)
    assert table.sigma[5] == 0.25 and table.probe_side[:5].tolist() == [1] * 5


def test_probe_running_mean_forgets_after_memory_visits_and_the_first_of_a_repeated_index_wins():
    table = probe_table(3, memory=4)
    one = torch.tensor([0])
    for signal in (1.0, 0.0, 0.0, 0.0, 0.0):
        table.apply_probe(one, torch.tensor([1]), torch.tensor([signal]), torch.tensor([1]))
    # the mean of the first 4 (0.25), then an exponential moving average of weight 1/4
    assert table.probe_mean[0, 1] == pytest.approx(0.25 * 0.75) and table.probe_count[0].tolist() == [0, 4]
    table.apply_probe(torch.tensor([2, 2]), torch.tensor([0, 1]), torch.tensor([0.9, 0.1]), torch.tensor([1, 1]))
    assert table.probe_mean[2].tolist() == pytest.approx([0.9, 0.0]) and table.probe_count[2].tolist() == [1, 0]


def test_probe_sides_alternate_from_a_random_first_side():
    """The training sigmas are sigma e^(+-eta) (clipped), the side flipping at every visit; the first sides are
    random (both occur) and the same for the same seed; observe takes only the batch it was given."""
    table = probe_table(64)
    table.sigma[0] = 1.0
    idx, y = torch.arange(64), torch.zeros(64, dtype=torch.long)
    x = torch.zeros(64, 1, 2, 2)
    torch.manual_seed(3)
    first = table.training_sigmas(None, x, y, idx)
    sides = table._pending[1].clone()
    assert 10 < int(sides.sum()) < 54
    expected = torch.where(sides == 1, 0.25 * E, 0.25 / E)
    expected[0] = 1.0 if sides[0] == 1 else 1.0 / E
    torch.testing.assert_close(first, expected.float())
    table.observe(torch.zeros(64, 2), y, idx)
    table.training_sigmas(None, x, y, idx)
    assert torch.equal(table._pending[1], 1 - sides)
    with pytest.raises(RuntimeError, match="not the batch"):
        table.observe(torch.zeros(63, 2), y[:63], idx[:63])
    again = probe_table(64)
    torch.manual_seed(3)
    again.training_sigmas(None, x, y, idx)
    assert torch.equal(again._pending[1], sides)


WIDTHS = (2.0, 0.15)  # the half-widths of the two clusters' slabs: a wide margin and a narrow one


class Slabs(torch.nn.Module):
    """A fixed classifier of inputs x = (0, 100 k, ...): class 1 iff the noisy first coordinate lies within the
    slab |x_0| < w_k of cluster k (the second coordinate, which noise of sd <= 1 cannot round away, picks k).
    Its probability of the label 1 at sigma is 2 Phi(w_k / sigma) - 1, so the best sigma of the estimated radius
    s * PhiInv(clamp(p, 1/16, 15/16)) is known: sigma_max for the wide slab, about 0.081 for the narrow one."""

    def forward(self, x):
        k = torch.round(x[:, 0, 0, 1] / 100).long()
        z = 10.0 * (torch.tensor(WIDTHS)[k] - x[:, 0, 0, 0].abs())
        return torch.stack([-z / 2, z / 2], dim=1)


def train_toy_table(epochs: int, seed: int = 0) -> list[torch.Tensor]:
    """20 examples of each cluster, batches of 10, every example visited once per epoch (a shuffle per epoch):
    the probe rule's table after each epoch, noise from the global generator seeded with ``seed``."""
    torch.manual_seed(seed)
    table = probe_table(40, memory=8)
    x = torch.zeros(40, 1, 2, 2)
    x[20:, 0, 0, 1] = 100.0
    y, model, tables = torch.ones(40, dtype=torch.long), Slabs(), []
    for _ in range(epochs):
        order = torch.randperm(40)
        for start in range(0, 40, 10):
            idx = order[start:start + 10]
            sigma = table.training_sigmas(model, x[idx], y[idx], idx)
            table.observe(model(x[idx] + sigma.view(-1, 1, 1, 1) * torch.randn_like(x[idx])), y[idx], idx)
        tables.append(table.sigma.clone())
    return tables


def test_probe_rule_moves_each_cluster_toward_its_best_sigma_deterministically():
    best = [1.0]
    s = np.exp(np.linspace(np.log(0.05), np.log(1.0), 2000))
    for w in WIDTHS:
        score = s * norm.ppf(np.clip(2 * norm.cdf(w / s) - 1, 1 / 16, 15 / 16))
        best.append(s[score.argmax()])
    assert best[1] == 1.0 and 0.07 < best[2] < 0.09
    tables = train_toy_table(20)
    wide, narrow = tables[5][:20], tables[5][20:]
    # after 6 epochs: the wide cluster went up at every visit from the second on; the narrow one came down
    torch.testing.assert_close(wide, torch.full((20,), 0.25 * E ** 5))
    assert narrow.median() <= 0.25 / E ** 2 and (narrow < 0.25).float().mean() >= 0.75
    # after 20: the wide cluster's median at sigma_max (single draws still send a few down for a while, never
    # back below where they were after 6 epochs), the narrow one's median within a factor e^(3 eta) of its best
    assert tables[-1][:20].median() == 1.0 and tables[-1][:20].min() >= 0.25 * E ** 5 * (1 - 1e-6)
    assert best[2] / E ** 3 <= tables[-1][20:].median() <= best[2] * E ** 3
    assert all((t[20:] < 0.25).float().mean() >= 0.75 for t in tables[5:])
    for a, b in zip(tables, train_toy_table(6)):  # the same seed, the same tables
        assert torch.equal(a, b)
    assert not torch.equal(tables[5], train_toy_table(6, seed=1)[-1])


def test_initial_search_sets_each_cluster_near_its_best_level():
    """train.init=search on the two slabs: 5 levels from 0.05 to 1.0 in log-sigma, 16 draws each; the closed form
    picks 1.0 for the wide slab and 0.106 for the narrow one (0.05 a close second); the table is marked
    initialised, and that survives a checkpoint round trip."""
    settings = InstaRSSettings(**{**SETTINGS, "update_rule": "probe", "init": "search", "init_draws": 16})
    module = SmoothingClassifier(Slabs(), 2, settings, num_train=40)
    levels = rules.init_levels(0.05, 1.0, 5).numpy()
    np.testing.assert_allclose(levels, np.exp(np.linspace(np.log(0.05), 0.0, 5)), rtol=1e-6)
    x = torch.zeros(40, 1, 2, 2)
    x[20:, 0, 0, 1] = 100.0
    torch.manual_seed(0)
    module.initialise_table([(x[i], 1, i) for i in range(40)])
    table = module.sigma_table
    score = [levels * norm.ppf(np.clip(2 * norm.cdf(w / levels) - 1, 1 / 32, 31 / 32)) for w in WIDTHS]
    assert levels[score[0].argmax()] == pytest.approx(1.0) and levels[score[1].argmax()] == pytest.approx(levels[1])
    assert table.sigma[:20].median() == pytest.approx(1.0) and table.sigma[:20].min() >= levels[3] - 1e-6
    assert torch.all(table.sigma[20:] <= levels[1] + 1e-6)
    assert table.initialised and torch.all(table.probe_count == 0) and table.visits == 0
    again = settings.sigma_table(40)
    again.load_state_dict(table.state_dict())
    assert again.initialised and torch.equal(again.sigma, table.sigma)


class CountingRows(torch.nn.Module):
    """A tiny classifier that records the number of rows of every forward pass."""

    def __init__(self):
        super().__init__()
        self.inner = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
        self.rows: list[int] = []

    def forward(self, x):
        self.rows.append(x.shape[0])
        return self.inner(x)


@pytest.mark.parametrize("rule,loss,expected", [
    ("search", "gaussian", [3 * 4 * 6, 6]),   # 3 candidates x m_update 4 draws x 6 rows, then the step
    ("probe", "gaussian", [6]),               # the step's own forward only, as in stage 1
    ("probe", "consistency", [2 * 6]),        # the loss's 2 noisy copies, nothing more
])
def test_forward_passes_per_stage2_step(rule, loss, expected):
    from insta_rs.losses import ConsistencyLoss, GaussianAugmentation

    loss_object = ConsistencyLoss() if loss == "consistency" else GaussianAugmentation()
    settings = InstaRSSettings(**{**SETTINGS, "stage1_epochs": 0, "m_update": 4, "update_rule": rule},
                               loss=loss_object)
    module = SmoothingClassifier(CountingRows(), 3, settings, num_train=10)
    x, y, idx = torch.rand(6, 1, 2, 2), torch.tensor([0, 1, 2, 0, 1, 2]), torch.tensor([0, 2, 3, 5, 7, 9])
    module.training_step((x, y, idx), 0)
    assert module.model.rows == expected
    assert module.sigma_table.label[idx].tolist() == y.tolist()  # both rules updated the batch


def test_stage1_across_sigmas(compose):
    """stage1_sigma=log_uniform: log sigma uniform on [log sigma_min, log sigma_max] (Kolmogorov-Smirnov);
    a list: its levels, each about equally often; validation stays at sigma0; through train=insta_rs_probe."""
    from hydra.utils import instantiate
    from scipy.stats import kstest

    cfg = compose("train", ["train=insta_rs_probe", "train.stage1_sigma=log_uniform"])
    settings = instantiate(cfg.train, _convert_="all")
    assert settings.update_rule == "probe" and settings.stage1_sigma == "log_uniform"
    torch.manual_seed(0)
    drawn = settings.stage1_levels(20000, "cpu")
    assert drawn.min() >= 0.05 and drawn.max() <= 1.0
    logs = (np.log(drawn.numpy()) - np.log(0.05)) / (np.log(1.0) - np.log(0.05))
    assert kstest(logs, "uniform").pvalue > 0.01
    levels = InstaRSSettings(**{**SETTINGS, "stage1_sigma": [0.12, 0.5]}).stage1_levels(4000, "cpu")
    assert levels.unique().tolist() == pytest.approx([0.12, 0.5]) and abs(float((levels == 0.5).float().mean()) - 0.5) < 0.05
    assert InstaRSSettings(**SETTINGS).stage1_levels(3, "cpu") is None  # sigma0: drawn as before
    module = SmoothingClassifier(CountingRows(), 3, settings, num_train=10)
    seen = {}
    inner = module.loss

    def recording(model, x, y, sigma):
        seen["sigma"] = sigma.clone()
        return inner(model, x, y, sigma)

    module.loss = recording
    module.training_step((torch.rand(64, 1, 2, 2), torch.zeros(64, dtype=torch.long), torch.arange(64) % 10), 0)
    assert module.phase == "gaussian" and seen["sigma"].unique().numel() == 64  # one sigma per row
    assert torch.all(module._draw_levels(5, "cpu") == 0.25)  # validation's noise: sigma0


@pytest.mark.parametrize("loss", ["gaussian", "consistency", "macer"])
def test_stage2_step_trains_each_example_at_its_own_sigma_with_any_loss(compose, loss):
    """``train=insta_rs train/loss=<loss>`` composes, and a stage-2 step updates the batch's sigmas first,
    then hands the loss exactly the table's per-row sigmas."""
    from hydra.utils import instantiate

    from insta_rs import losses

    cfg = compose("train", ["train=insta_rs", f"train/loss={loss}", "dataset=synthetic", "train.stage1_epochs=0",
                            "train.m_update=4"])
    settings = instantiate(cfg.train, _convert_="all")
    assert isinstance(settings, InstaRSSettings)
    assert type(settings.loss) is {"gaussian": losses.GaussianAugmentation, "consistency": losses.ConsistencyLoss,
                                   "macer": losses.MacerLoss}[loss]
    source = instantiate(cfg.dataset)
    info = source.info
    model = instantiate(cfg.model, num_classes=info.num_classes, input_shape=tuple(info.input_shape),
                        mean=tuple(info.mean), std=tuple(info.std))
    module = SmoothingClassifier(model, info.num_classes, settings, num_train=len(source.split("train")))
    table = module.sigma_table
    table.sigma[:] = torch.linspace(0.1, 0.9, len(table))
    seen = {}

    class Recording(torch.nn.Module):
        def __init__(self, loss):
            super().__init__()
            self.inner = loss

        def forward(self, model, x, y, sigma):
            seen["sigma"] = sigma.clone()
            return self.inner(model, x, y, sigma)

    module.loss = Recording(module.loss)
    x, y = torch.rand(6, *info.input_shape), torch.tensor([0, 1, 2, 0, 1, 2])
    idx = torch.tensor([0, 17, 40, 99, 100, 255])
    loss_value = module.training_step((x, y, idx), 0)
    assert torch.isfinite(loss_value)
    assert table.label[idx].tolist() == y.tolist()  # updated before the step
    torch.testing.assert_close(seen["sigma"], table[idx])
    assert not torch.allclose(table[idx], torch.linspace(0.1, 0.9, 256)[idx])


# ------------------------------------------------------------------ the real train.py ---------------------------

TRAIN = ["train=insta_rs_probe", "dataset=synthetic", "train.epochs=4", "train.stage1_epochs=1", "train.batch_size=32",
         "trainer.enable_progress_bar=false"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One uninterrupted run (logger=none), and one stopped after epoch 3 of 4 (mid stage 2, logger=wandb
    offline + csv) then resumed with ckpt_path=last (logger=csv). Same seed; the probe rule, whose state (the
    per-side means, counts and last sides) and random first sides a resume must carry."""
    root = tmp_path_factory.mktemp("insta_train")
    full, part = root / "full", root / "part"
    run_script("train.py", f"hydra.run.dir={full}", *TRAIN, "logger=none")
    run_script("train.py", f"hydra.run.dir={part}", *TRAIN, "logger=wandb", "trainer.max_epochs=3")
    interrupted = torch.load(part / "checkpoints" / "last.ckpt", weights_only=False)
    run_script("train.py", f"hydra.run.dir={part}", *TRAIN, "logger=csv", "ckpt_path=last")
    return {"full": full, "part": part, "interrupted": interrupted}


def test_resume_mid_stage2_ends_like_the_uninterrupted_run(runs):
    interrupted = runs["interrupted"]
    assert interrupted["epoch"] == 2 and not torch.all(interrupted["insta_rs"]["sigma_table"] == 0.25)
    assert set(interrupted["insta_rs"]["rng"]) == {"torch", "cuda", "numpy", "python"}
    a = torch.load(runs["full"] / "checkpoints" / "last.ckpt", weights_only=False)
    b = torch.load(runs["part"] / "checkpoints" / "last.ckpt", weights_only=False)
    # the same number of steps; "epoch" is the last finished epoch's index (3), or 4 where Lightning's
    # ModelCheckpoint(save_last=True).on_train_end wrote last.ckpt after the loop, as it does when validation
    # did not improve in the resumed epochs (conf/callbacks/default.yaml)
    assert a["global_step"] == b["global_step"] == 4 * 8 and a["epoch"] in (3, 4) and b["epoch"] in (3, 4)
    # the table after the resumed epoch moved on from the interrupted one, and equals the uninterrupted run's
    assert not torch.equal(b["insta_rs"]["sigma_table"], interrupted["insta_rs"]["sigma_table"])
    for key in ("sigma_table", "label_table", "difficulty", "probe_mean", "probe_count", "probe_side"):
        torch.testing.assert_close(a["insta_rs"][key], b["insta_rs"][key], rtol=0, atol=0, equal_nan=True)
    assert (b["insta_rs"]["probe_count"] > 0).all()  # every example saw both sides
    assert a["insta_rs"]["visits"] == b["insta_rs"]["visits"] == 3 * 8  # 3 stage-2 epochs of 256 / 32 batches
    # weights, optimizer momentum and LR schedule too: the same trajectory, not just the same table
    for name, tensor in a["state_dict"].items():
        torch.testing.assert_close(tensor, b["state_dict"][name], rtol=0, atol=0, msg=name)
    assert a["lr_schedulers"] == b["lr_schedulers"]
    for k, state in a["optimizer_states"][0]["state"].items():
        torch.testing.assert_close(state["momentum_buffer"], b["optimizer_states"][0]["state"][k]["momentum_buffer"])


def test_train_sigma_export(runs):
    """train_sigma.pt: every synthetic training example (all visited), its label from the data set itself,
    sigmas in the bounds, equal to the checkpoint's table; plus the figure."""
    from insta_rs.data import Synthetic

    exported = torch.load(runs["full"] / "train_sigma.pt", weights_only=False)
    assert {"idx", "sigma", "label", "difficulty", "config"} <= set(exported)
    assert exported["config"]["train"]["_target_"] == "insta_rs.training.InstaRSSettings"
    assert exported["idx"].dtype == torch.long and exported["label"].dtype == torch.long
    assert exported["sigma"].dtype == torch.float32
    assert exported["idx"].tolist() == list(range(256))
    labels = torch.tensor([int(Synthetic().split("train")[i][1]) for i in range(256)])
    assert torch.equal(exported["label"], labels)
    assert exported["sigma"].min() >= 0.05 and exported["sigma"].max() <= 1.0 + 1e-6
    # examples got different sigmas: two probe moves of e^(+-eta) after 3 stage-2 epochs, up for some, down for others
    assert (exported["sigma"] > 0.25 * E).any() and (exported["sigma"] < 0.25 / E).any()
    table = torch.load(runs["full"] / "checkpoints" / "last.ckpt", weights_only=False)["insta_rs"]["sigma_table"]
    torch.testing.assert_close(exported["sigma"], table[exported["idx"]])
    assert (runs["full"] / "sigma_hist_train.png").stat().st_size > 1000


def test_loggers_wandb_csv_and_none(runs):
    """logger=none trained (the full run); wandb offline recorded a histogram of the table per epoch; csv
    has the phase and table quantiles per epoch, and a resumed run keeps the interrupted run's csv."""
    assert not (runs["full"] / "csv").exists() and not (runs["full"] / "wandb").exists()
    records = list(runs["part"].glob("wandb/offline-run-*/run-*.wandb"))
    assert len(records) == 1
    histograms = re.findall(rb"sigma_table/hist.{0,8}_type", records[0].read_bytes())
    assert len(histograms) >= 3, f"{len(histograms)} histogram records for 3 epochs"
    before = pd.read_csv(runs["part"] / "csv" / "metrics.before_resume_1.csv")
    after = pd.read_csv(runs["part"] / "csv" / "metrics.csv")
    phases = {int(e): p for e, p in before.dropna(subset=["train/phase"])[["epoch", "train/phase"]].values}
    assert phases == {0: 0.0, 1: 1.0, 2: 1.0}
    resumed = after.dropna(subset=["train/phase"])
    assert resumed["epoch"].tolist() == [3] and resumed["train/phase"].tolist() == [1.0]
    for column in ("sigma_table/q10", "sigma_table/q50", "sigma_table/q90", "sigma_table/at_min",
                   "sigma_table/at_max"):
        assert column in after.columns and after[column].notna().any(), column
    q = after.dropna(subset=["sigma_table/q50"]).iloc[-1]
    table = torch.load(runs["part"] / "checkpoints" / "last.ckpt", weights_only=False)["insta_rs"]["sigma_table"]
    assert q["sigma_table/q50"] == pytest.approx(float(torch.quantile(table.double(), 0.5)), rel=1e-5)
    assert q["sigma_table/at_max"] == pytest.approx(float((table >= 1.0 - 1e-6).double().mean()))


def test_resume_check_allows_more_epochs_and_names_the_first_difference(runs):
    ckpt = str(runs["part"] / "checkpoints" / "last.ckpt")
    config = torch.load(ckpt, weights_only=False)["insta_rs"]["config"]
    check_resumable(ckpt, {**config, "train": {**config["train"], "epochs": 8}}, 3)  # epochs may differ
    with pytest.raises(CheckpointError, match=r"model\.width=32.*this run has model\.width=8"):
        check_resumable(ckpt, {**config, "model": {**config["model"], "width": 8}}, 3)
    with pytest.raises(CheckpointError, match=r"train\.eta=0\.1.*this run has train\.eta=0\.2"):
        check_resumable(ckpt, {**config, "train": {**config["train"], "eta": 0.2}}, 3)
    loss = {"_target_": "insta_rs.losses.MacerLoss"}
    with pytest.raises(CheckpointError, match=r"train\.loss\._target_=.*GaussianAugmentation.*MacerLoss"):
        check_resumable(ckpt, {**config, "train": {**config["train"], "loss": loss}}, 3)
    with pytest.raises(CheckpointError, match="3 classes.*has 4") as refused:
        check_resumable(ckpt, config, 4)
    assert isinstance(refused.value, ConfigError)  # a setting fixes it: exit code 2, as certify.py's resume check


def test_resume_from_another_model_is_refused_in_one_line(runs):
    run_dir = runs["part"]
    config_before = (run_dir / "config.yaml").read_text()
    result = run_script("train.py", f"hydra.run.dir={run_dir}", *TRAIN, "logger=none", "model.width=8",
                        "ckpt_path=last", check=False)
    assert result.returncode == 2, result.stderr  # a setting fixes it: a configuration error
    assert len(result.stderr.strip().splitlines()) == 1 and "model.width=8" in result.stderr
    assert (run_dir / "config.yaml").read_text() == config_before  # a refused resume writes nothing


# ------------------------------------------------------------------ DDP, 2 CPU processes ---------------------------

class RecordSigmaUpdates(pl.Callback):
    """Test helper (used by the DDP test through +callbacks.record._target_): each rank records its own
    updates before the gather (search rule: (idx, new sigma); probe rule: (idx, side, signal, label)), and the
    standard-normal draws of every training step's loss (the Gaussian loss's e, drawn first by it: peeked from
    the RNG, which is then put back); it saves them with its final table."""

    def on_train_start(self, trainer, pl_module):
        self.updates, self.noise = [], []
        table, loss = pl_module.sigma_table, pl_module.loss
        propose, observe = table.propose, table.observe

        def recording_propose(*args):
            proposal = propose(*args)
            self.updates.append({"idx": proposal[0].cpu(), "sigma": proposal[1].cpu()})
            return proposal

        def recording_observe(logits, y, idx, gather):
            signal = rules.probe_signal(logits, y, table.signal)
            self.updates.append({"idx": idx.cpu(), "side": table._pending[1].cpu(), "signal": signal.cpu(),
                                 "label": y.cpu()})
            return observe(logits, y, idx, gather)

        def recording_loss(model, x, y, sigma):
            state = torch.get_rng_state()
            self.noise.append(torch.randn_like(x).cpu())
            torch.set_rng_state(state)
            return loss(model, x, y, sigma)

        if isinstance(table, rules.ProbeSigmaTable):
            table.observe = recording_observe
        else:
            table.propose = recording_propose
        pl_module.loss = recording_loss

    def on_train_end(self, trainer, pl_module):
        import os
        from pathlib import Path

        torch.save({"updates": self.updates, "noise": self.noise, "table": pl_module.sigma_table.state_dict()},
                   Path(os.environ["INSTA_RS_RUN_DIR"]) / f"table_rank{trainer.global_rank}.pt")


@pytest.mark.slow
@pytest.mark.parametrize("rule", ["insta_rs", "insta_rs_probe"])
def test_ddp_two_cpu_ranks_draw_their_own_noise_and_hold_the_table_the_gathered_updates_imply(rule, tmp_path,
                                                                                             monkeypatch):
    """31 examples on 2 ranks: the distributed sampler pads to 32, so each epoch one example is visited by
    both ranks in the same step (one shared shuffle). In every step the two ranks draw different noise.
    Replaying both ranks' own updates in rank order, the lowest rank's value winning a duplicate, must give
    exactly the table that each rank holds (search rule: the new sigmas; probe rule: the signals, applied to a
    fresh table, which must then equal each rank's in every tensor; a duplicated example was probed at the
    same side on both ranks once visited before)."""
    run_dir = tmp_path / "ddp"
    monkeypatch.setenv("PYTHONPATH", f"{ROOT / 'tests'}:{ROOT}")
    run_script("train.py", f"hydra.run.dir={run_dir}", f"train={rule}", "dataset=synthetic", "trainer=ddp_sim",
               "dataset.train_size=31", "dataset.val_size=16", "train.epochs=4", "train.stage1_epochs=1",
               "train.batch_size=16", "logger=csv", "+callbacks.record._target_=test_insta_train.RecordSigmaUpdates",
               timeout=110)
    ranks = [torch.load(run_dir / f"table_rank{r}.pt", weights_only=False) for r in (0, 1)]
    assert len(ranks[0]["noise"]) == len(ranks[1]["noise"]) == 4  # one step per rank and epoch
    for mine, theirs in zip(ranks[0]["noise"], ranks[1]["noise"]):
        assert mine.shape == theirs.shape == (16, 1, 8, 8)
        assert (mine - theirs).abs().min() > 0, "the two ranks drew the same noise"
    assert len(ranks[0]["updates"]) == len(ranks[1]["updates"]) == 3  # one step per rank in each stage-2 epoch
    table = torch.full((31,), 0.25)
    replay = InstaRSSettings(**{**SETTINGS, "update_rule": "probe"}).sigma_table(31)  # the run's probe settings
    duplicates = 0
    for step, (mine, theirs) in enumerate(zip(ranks[0]["updates"], ranks[1]["updates"])):
        assert mine["idx"].shape == theirs["idx"].shape == (16,)
        both = {key: torch.cat([mine[key], theirs[key]]) for key in mine}
        duplicates += len(both["idx"]) - len(set(both["idx"].tolist()))
        if rule == "insta_rs_probe":
            shared = [i for i in mine["idx"].tolist() if i in theirs["idx"].tolist()] if step > 0 else []
            for i in shared:  # visited before: its side follows from the shared table (a first side is random)
                assert mine["side"][mine["idx"] == i].item() == theirs["side"][theirs["idx"] == i].item()
            replay.apply_probe(both["idx"], both["side"], both["signal"], both["label"])
            continue
        pairs = list(zip(both["idx"].tolist(), both["sigma"].tolist()))
        for i, s in reversed(pairs):  # written last = the first occurrence = the lowest rank's value
            table[i] = s
    assert duplicates == 3
    if rule == "insta_rs_probe":
        expected = replay.state_dict()
        table = expected["sigma_table"]
        assert len(table.unique()) > 1  # the sigmas moved
        for rank in ranks:
            for key, value in expected.items():
                if key != "visits":
                    torch.testing.assert_close(rank["table"][key], value, rtol=0, atol=0, equal_nan=True, msg=key)
    for rank in ranks:
        torch.testing.assert_close(rank["table"]["sigma_table"], table, rtol=0, atol=0)
        assert (rank["table"]["label_table"] >= 0).all()
    assert torch.equal(ranks[0]["table"]["label_table"], ranks[1]["table"]["label_table"])
    exported = torch.load(run_dir / "train_sigma.pt", weights_only=False)
    assert exported["idx"].tolist() == list(range(31))
    torch.testing.assert_close(exported["sigma"], table, rtol=0, atol=0)


def test_train_plot_title_says_how_many_of_the_examples_were_visited(tmp_path):
    """sigma_hist_train.png's title: the visited examples (those with a learned sigma) out of the whole table."""
    table = rules.SigmaTable(10, 0.25, 0.1, 0.05, 1.0, 4, 1)
    table.label[[2, 5, 7]] = 1  # three examples visited by stage 2
    exported = table.export({})
    title = rules.train_plot_title(len(exported["idx"]), len(table), 4)
    assert title == "Insta-RS Train: 3 of 10 training examples visited, after 4 epochs"
    assert rules.train_plot_title(736, 1257, 30).startswith("Insta-RS Train: 736 of 1,257 training examples visited")
