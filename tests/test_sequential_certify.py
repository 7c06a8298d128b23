"""Sequential certification through the real code paths (SOUND.md 3e): ``Smooth`` with a SequentialPlan,
the finite-set rules staged per level, and certify.py with ``certify.sampling=sequential``.

The Monte Carlo checks use the half-space classifier of test_validity_suite.py, whose smoothed classifier
is the same half-space: the exact robust radius is the distance to the boundary. A violation is a radius
beyond it (or any radius for the wrong class); it may happen in at most alpha of the trials. The same check
run on a broken plan (every stage's bound at the full alpha, the best look reported) must fail."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from scipy.stats import norm

from insta_rs.certificates.sequential import Schedule, SequentialPlan, geometric_schedule
from insta_rs.search.finite_set import BestLevelSigma
from insta_rs.smoothing import Smooth, count_draws, draws_of

from conftest import ROOT, run_script
from test_validity_suite import HalfSpace, check_rate

SIGMA, P_A, N_MAX, ALPHA, TRIALS = 0.5, 0.9, 2000, 0.1, 600
DISTANCE = SIGMA * float(norm.ppf(P_A))


class FullAlphaEveryStage(SequentialPlan):
    """The invalid rule of SOUND.md 3e: each stage's Clopper-Pearson bound at the whole alpha."""

    def bound(self, n_max, alpha):
        sizes = geometric_schedule(n_max, alpha, first=self.first, factor=self.factor).sizes
        return Schedule(sizes, tuple(alpha for _ in sizes))


def violations(plan: SequentialPlan) -> tuple[int, float]:
    x = torch.tensor([0.6, 0.8]).view(1, 1, 2) * DISTANCE  # w.x - b = DISTANCE, |w| = 1
    smooth = Smooth(HalfSpace([0.6, 0.8], 0.0), 2, batch_size=4000, device="cpu")
    smooth.sequential = plan
    generators = [torch.Generator().manual_seed(i) for i in range(TRIALS)]
    with count_draws():
        certs = smooth.certify_batch(x.expand(TRIALS, 1, 1, 2), [SIGMA] * TRIALS, 20, N_MAX, ALPHA, generators)
        mean_draws = sum(draws_of(g) for g in generators) / TRIALS
    bad = sum((c.predict == 1 and c.radius > DISTANCE) or (c.predict == 0 and c.radius > 0) for c in certs)
    return bad, mean_draws


@pytest.mark.parametrize("bound", ["union", "anytime"])
def test_sequential_certificate_never_exceeds_the_exact_radius(bound):
    plan = SequentialPlan(bound_kind=bound, first=100, factor=2.0, tolerance=0.02, reach_alpha=0.01)
    bad, mean_draws = violations(plan)
    check_rate(f"sequential/{bound} radius vs exact distance", bad, TRIALS, ALPHA)
    assert 20 + 100 <= mean_draws < 20 + N_MAX  # it stops early on some inputs, never draws past n_max


def test_radii_mode_certificate_never_exceeds_the_exact_radius():
    """Radii mode (r = 0 first, then the listed radii) stops at data-dependent looks too: still within alpha."""
    plan = SequentialPlan(first=100, factor=2.0, radii=(0.25, 0.5, 1.0), reach_alpha=0.01)
    bad, mean_draws = violations(plan)
    check_rate("sequential/radii radius vs exact distance", bad, TRIALS, ALPHA)
    assert 20 + 100 <= mean_draws < 20 + N_MAX


@pytest.mark.parametrize("radii", [None, tuple(0.05 * k for k in range(1, 41))], ids=["tolerance", "radii"])
def test_the_check_catches_full_alpha_at_every_stage(radii):
    bad, _ = violations(FullAlphaEveryStage(first=100, factor=2.0, tolerance=0.0, radii=radii, reach_alpha=None))
    with pytest.raises(AssertionError, match="exceeded by"):
        check_rate("full alpha at every stage", bad, TRIALS, ALPHA)


def test_radii_mode_certifies_p_a_just_above_one_half_at_r_0_like_fixed_n():
    """A half-space input with p_A = 0.52 at sigma 0.25 (radius 0.0125, below every listed radius): fixed n =
    50,000 certifies it (about 6 standard errors of margin); radii mode with the same maximum must certify it
    too (before r = 0 was a target it abstained at the first look, 0.25 being out of reach)."""
    sigma, n_max, alpha = 0.25, 50_000, 0.001
    distance = sigma * float(norm.ppf(0.52))
    x = torch.tensor([0.6, 0.8]).view(1, 1, 2) * distance
    smooth = Smooth(HalfSpace([0.6, 0.8], 0.0), 2, batch_size=4000, device="cpu")
    n0 = 5000  # enough selection draws that the candidate is class 1 (p_A 0.52 against 0.48)
    fixed = smooth.certify(x, sigma, n0, n_max, alpha, torch.Generator().manual_seed(5))
    smooth.sequential = SequentialPlan(first=1000, radii=(0.25, 0.5, 0.75, 1.0))
    staged = smooth.certify(x, sigma, n0, n_max, alpha, torch.Generator().manual_seed(5))
    assert fixed.predict == staged.predict == 1, (fixed, staged)
    assert 0 < staged.radius <= distance and staged.n <= n_max


def test_counted_draws_are_every_draw_of_the_row():
    """Fixed sampling: n0 + n per row; the grid: K (n0 + n); sequential: at most that, at least n0 + first."""
    model = HalfSpace([0.6, 0.8], 0.0)
    x = torch.tensor([0.3, 0.4]).view(1, 1, 2)
    smooth = Smooth(model, 2, batch_size=512, device="cpu")
    grid = BestLevelSigma(levels=[0.5, 0.25])
    with count_draws():
        g = torch.Generator().manual_seed(0)
        smooth.certify(x, 0.25, 16, 300, 0.01, g)
        assert draws_of(g) == 316
        g = torch.Generator().manual_seed(1)
        grid.certify(smooth, x, 16, 300, 0.01, g)
        assert draws_of(g) == 2 * 316
        smooth.sequential = SequentialPlan(first=50, tolerance=10.0)  # stops after the first stage
        g = torch.Generator().manual_seed(2)
        row = grid.certify(smooth, x, 16, 300, 0.01, g)
        assert draws_of(g) == 2 * (16 + 50) and row.search_draws == 16 + 50


CERTIFY = ["certify=fast", "certify.n0=32", "certify.n=4000", "certify.skip=40", "certify.max=5",
           "certify.progress=false", "logger=none", f"ckpt_path={ROOT / 'tests/fixtures/identity/model.ckpt'}",
           "certify.sampling=sequential", "certify.first_stage=500"]


def test_certify_py_sequential_rows_have_draws_and_resume_identically(tmp_path):
    run_script("certify.py", *CERTIFY, f"hydra.run.dir={tmp_path}")
    lines = (tmp_path / "certify.tsv").read_text().splitlines()
    header = lines[0].split("\t")
    draws = [int(line.split("\t")[header.index("draws")]) for line in lines[1:]]
    assert len(draws) == 5 and all(32 + 500 <= d <= 32 + 4000 for d in draws)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["draws_mean"] == pytest.approx(sum(draws) / 5, abs=0.1) and summary["guarantee"] == {"sound": 5}
    # a cut run resumes to the same rows
    (tmp_path / "certify.tsv").write_text("\n".join(lines[:3]) + "\n" + lines[3][:7])
    run_script("certify.py", *CERTIFY, f"hydra.run.dir={tmp_path}")
    strip = lambda rows: [r.split("\t")[:5] + r.split("\t")[6:9] for r in rows]  # noqa: E731  (no time column)
    assert strip((tmp_path / "certify.tsv").read_text().splitlines()) == strip(lines)
    # another stopping rule is another certification: refused
    result = run_script("certify.py", *CERTIFY, "certify.tolerance=0.1", f"hydra.run.dir={tmp_path}", check=False)
    assert result.returncode == 2 and "sequential.tolerance" in result.stderr


def test_certify_py_radii_mode_reports_listed_radii(tmp_path):
    run_script("certify.py", *CERTIFY, "certify.radii=[0.25,0.5]", "sigma_search=grid", f"hydra.run.dir={tmp_path}")
    lines = (tmp_path / "certify.tsv").read_text().splitlines()
    assert len(lines) == 6 and "draws" in lines[0] and "limited_by" in lines[0]


@pytest.mark.parametrize("override,words", [
    ("certify.sampling=staged", ["certify.sampling", "fixed or sequential"]),
    ("certify.bound=wald", ["certify.bound", "union or anytime"]),
    ("certify.tolerance=-1", ["certify.tolerance"]),
])
def test_bad_sequential_settings_are_one_line(tmp_path, override, words):
    result = run_script("certify.py", *CERTIFY, override, f"hydra.run.dir={tmp_path}", check=False)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and all(w in lines[0] for w in words), result.stderr
    assert not (tmp_path / "certify.tsv").exists()


def test_settings_reject_radii_without_sequential():
    from insta_rs.certification import CertifySettings
    from insta_rs.errors import ConfigError

    with pytest.raises(ConfigError, match="^radii="):
        CertifySettings(radii=[0.5])
    assert dataclasses.replace(CertifySettings(), sampling="sequential", radii=[0.5, 0.25]).plan.radii == (0.25, 0.5)
