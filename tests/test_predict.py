"""PREDICT (ALGORITHMS.md 1) through the certification path: ``certify.mode=predict`` writes predict.tsv.

The statistics are checked on an analytic base classifier whose class probabilities are known exactly:
f(z) = 0 if z_0 > t else 1 at the input 0 with sigma = 1, so P[f = 0] = 1 - Phi(t) for every row. PREDICT's
answer then has an exact distribution over the n draws (scipy's binomial test over k ~ Bin(n, p)), which
a Monte Carlo over many rows (each with its own generator) must match; at a tie (p = 1/2) any answer is
wrong and must come at most alpha of the time. The entry point is run for real on the identity fixture.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy.stats import binom, binomtest, norm

from conftest import ROOT, run_script
from insta_rs.certificates import ABSTAIN
from insta_rs.certification import Certifier
from insta_rs.search import BestLevelSigma, CascadeSigma, FixedSigma, InstaRSSearch, SemiElasticSigma
from insta_rs.search.best_level import BestLevelSearch
from insta_rs.search.selector import SelectorSigma
from insta_rs.smoothing import Smooth, count_draws, draws_of, row_generator

FIXTURE = ROOT / "tests" / "fixtures" / "identity"
SMALL = ["certify=fast", "certify.n=200", "certify.max=3", "certify.skip=40", "certify.progress=false", "logger=none",
         f"ckpt_path={FIXTURE / 'model.ckpt'}"]
PREDICT = [*SMALL, "certify.mode=predict"]
WALL_CLOCK = ("time", "search_time")


class Split(torch.nn.Module):
    """Class 0 where the first coordinate exceeds ``threshold``, else class 1 (two classes)."""

    def __init__(self, threshold: float):
        super().__init__()
        self.threshold = threshold

    def forward(self, z):
        score = z.flatten(1)[:, 0] - self.threshold
        return torch.stack([score, -score], dim=1)


def exact_answers(p: float, n: int, alpha: float) -> tuple[float, float]:
    """P[PREDICT answers 0], P[it answers 1] when each of n draws is class 0 with probability p."""
    k = np.arange(n + 1)
    confident = np.array([binomtest(int(max(i, n - i)), n, 0.5).pvalue <= alpha for i in k])
    pmf = binom.pmf(k, n, p)
    return float(pmf[confident & (k > n - k)].sum()), float(pmf[confident & (k < n - k)].sum())


@pytest.mark.parametrize("p", [0.5, 0.7])
def test_predict_rows_follow_the_exact_answer_distribution(p):
    n, alpha, rows = 30, 0.1, 600
    smooth = Smooth(Split(float(norm.ppf(1 - p))), 2, batch_size=n)
    certifier = Certifier(smooth, FixedSigma(1.0), 1, n, alpha, seed=3, mode="predict")
    out = certifier.rows([torch.zeros(1, 1, 2)] * rows, [0] * rows, list(range(rows)))
    answers = np.array([row["predict"] for row in out])
    assert set(answers) <= {0, 1, ABSTAIN}
    assert all(row["guarantee"] == "sound" and row["sigma"] == 1.0 and row["correct"] == int(row["predict"] == 0)
               for row in out)
    answer_0, answer_1 = exact_answers(p, n, alpha)
    wrong = answer_0 + answer_1 if p == 0.5 else answer_1  # at a tie g(x) is undefined: every answer is wrong
    assert wrong <= alpha  # the guarantee, from the exact distribution
    for seen, expected in [((answers == 0).sum(), answer_0), ((answers == 1).sum(), answer_1)]:
        low, high = binom.ppf(1e-6, rows, expected), binom.ppf(1 - 1e-6, rows, expected)
        assert low <= seen <= high, (seen, expected * rows)
    if p == 0.5:  # PREDICT abstains at a tie at least 1 - alpha of the time (binomial tolerance)
        assert (answers != ABSTAIN).sum() <= binom.ppf(1 - 1e-6, rows, alpha)


class LevelPicker(torch.nn.Module):
    """A selector network over two levels: always level 1."""

    def forward(self, z):
        return torch.tensor([[0.0, 1.0]]).expand(z.shape[0], 2)


def methods():
    semi = SemiElasticSigma(sigma_b=0.5, r=0.1, k=2, m=0.0)
    semi.set_reference(torch.rand(8, 1, 1, 2, generator=torch.Generator().manual_seed(0)))
    selector = SelectorSigma("unused.pt")
    selector.set_selector(LevelPicker(), [0.25, 0.5], 0.5)
    return {"fixed": (FixedSigma(0.5), "sound"), "semi_elastic": (semi, "sound"),
            "insta_rs": (InstaRSSearch(m=16, steps=2), "instance"),
            "grid": (BestLevelSigma([1.0, 0.5]), "instance"), "cascade": (CascadeSigma([1.0, 0.5]), "instance"),
            "best_level": (BestLevelSearch([1.0, 0.5]), "instance"), "selector": (selector, "instance")}


@pytest.mark.parametrize("name", list(methods()))
def test_every_method_predicts_at_its_chosen_sigma_with_its_label_and_draws(name):
    """Each row carries the label of its sigma choice (sound: a function of x alone; instance: chosen from draws),
    a sigma the method can choose, and search_draws + n = every draw the row's generator served."""
    method, label = methods()[name]
    n, smooth = 50, Smooth(Split(0.0), 2, batch_size=64)
    certifier = Certifier(smooth, method, 20, n, 0.01, seed=0, mode="predict")
    x = torch.full((1, 1, 2), 0.3)
    row, = certifier.rows([x], [0], [7])
    with count_draws():  # a block of its own: draws are counted by the generator's id, which a freed one may share
        generator = row_generator(0, 7)
        choice = method.choose_sigma(smooth, x, 20, 0.01, generator)
        drawn = draws_of(generator)
    assert row["guarantee"] == label == choice.guarantee
    assert row["sigma"] == choice.sigma and row["search_draws"] == choice.search_draws == drawn
    assert row["predict"] == smooth.predict(x, choice.sigma, n, 0.01, generator)  # the same stream, continued
    if hasattr(method, "levels"):
        assert row["sigma"] in method.levels
    if name == "selector":
        assert row["sigma"] == 0.5  # the level the selector picks


@pytest.fixture(scope="module")
def predict_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("predict")
    run_script("certify.py", *PREDICT, f"hydra.run.dir={run_dir}")
    return run_dir


def test_certify_py_predict_writes_cohens_predict_tsv_that_analyze_reads(predict_run):
    lines = (predict_run / "predict.tsv").read_text().splitlines()
    assert lines[0].split("\t")[:5] == ["idx", "label", "predict", "correct", "time"]
    assert {"sigma", "guarantee"} <= set(lines[0].split("\t"))
    rows = [dict(zip(lines[0].split("\t"), line.split("\t"))) for line in lines[1:]]
    assert [row["idx"] for row in rows] == ["0", "40", "80"]
    assert all(row["correct"] == str(int(row["predict"] == row["label"])) for row in rows)
    summary = json.loads((predict_run / "summary.json").read_text())
    assert summary["rows"] == 3 and summary["guarantee"] == {"sound": 3}
    assert summary["accuracy"] == np.mean([row["correct"] == "1" for row in rows])
    assert summary["abstain_rate"] == np.mean([row["predict"] == "-1" for row in rows])
    assert not (predict_run / "certify.tsv").exists() and not (predict_run / "certified_accuracy.png").exists()
    result = run_script("-m insta_rs.analyze", str(predict_run / "predict.tsv"))
    table = [line for line in result.stdout.splitlines() if line.startswith("| ")]
    assert "accuracy" in table[0] and "abstain" in table[0] and "ACR" not in table[0]
    cells = [cell.strip() for cell in table[1].strip("|").split("|")]
    assert [cell.split(" [")[0] for cell in cells[1:5]] == ["sound", "3", f"{summary['accuracy']:.3f}",
                                                              f"{summary['abstain_rate']:.3f}"]


def without_wall_clock(text: str) -> list[list[str]]:
    lines = [line.split("\t") for line in text.splitlines()]
    keep = [i for i, column in enumerate(lines[0]) if column not in WALL_CLOCK]
    return [[fields[i] for i in keep] for fields in lines]


def test_a_predict_run_resumes_after_its_last_complete_row(predict_run, tmp_path):
    full = (predict_run / "predict.tsv").read_text()
    run_dir = tmp_path / "resumed"
    run_dir.mkdir()
    for name in ("predict.tsv", "predict.settings.json"):
        (run_dir / name).write_text((predict_run / name).read_text())
    header, first, second = full.splitlines()[:3]
    (run_dir / "predict.tsv").write_text(f"{header}\n{first}\n{second[:5]}")  # killed while writing row 2
    result = run_script("certify.py", *PREDICT, f"hydra.run.dir={run_dir}")
    assert "resuming after 1 of 3 rows" in result.stdout
    resumed = (run_dir / "predict.tsv").read_text()
    assert without_wall_clock(resumed) == without_wall_clock(full)
    again = run_script("certify.py", *PREDICT, f"hydra.run.dir={run_dir}")
    assert "resuming after 3 of 3 rows" in again.stdout
    assert (run_dir / "predict.tsv").read_text() == resumed


def test_a_bad_mode_is_one_line_and_exit_2(tmp_path):
    result = run_script("certify.py", *SMALL, "certify.mode=foo", f"hydra.run.dir={tmp_path / 'run'}", check=False)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr[-2000:]
    assert "certify.mode='foo'" in lines[0] and "predict" in lines[0]
    assert not (tmp_path / "run" / "predict.tsv").exists()
