"""Memory-based consistency (ALGORITHMS.md 3b): a hand-worked 2-D example, a plain reference, the invariant."""

from __future__ import annotations

import math

import numpy as np
import pytest

from insta_rs.certificates import ABSTAIN
from insta_rs.certificates.memory import memory_consistency


def test_hand_worked_two_dimensional_example():
    inputs = np.array([[0.0, 0.0], [1.5, 0.0], [0.5, 0.0], [0.0, 0.1], [0.0, 3.0], [0.0, 1.8], [5.0, 5.0]])
    predicts = np.array([0, 1, 1, ABSTAIN, 0, 1, 2])
    radii = np.array([1.0, 1.0, 0.3, 0.0, 1.0, 2.0, 0.5])
    new_predicts, new_radii, changed = memory_consistency(inputs, predicts, radii)
    # row 1: overlaps ball 0 (1.5 < 1 + 1), d = 1.5 - 1 = 0.5 >= 0 -> keeps class 1, radius 0.5
    # row 2: inside ball 0 (0.5 < 1), d = 0.5 - 1 = -0.5 -> class 0, radius 0.5 (ball 1 has its own class)
    # row 3: abstained, stays so and adds no ball
    # row 4: (0, 3) r 1 touches no ball of another class -> unchanged
    # row 5: (0, 1.8) r 2 class 1 overlaps ball 0 (gap 1.8 - 1 = 0.8), ball 2 (gap sqrt(0.25 + 3.24) - 0.5)
    #        and ball 4 (gap 1.2 - 1 = 0.2) -> radius 0.2
    # row 6: far away -> unchanged
    assert new_predicts.tolist() == [0, 1, 0, ABSTAIN, 0, 1, 2]
    exact = np.array([1.0, 0.5, 0.5, 0.0, 1.0, 0.2, 0.5])
    assert new_radii == pytest.approx(exact, abs=2e-6)
    assert np.all(new_radii <= exact)  # changed radii are rounded down to 6 decimals, never up
    assert changed.tolist() == [False, True, True, False, False, True, False]


def test_abstained_rows_create_no_ball_and_zero_radius_rows_are_points():
    inputs = np.array([[0.0, 0.0], [0.5, 0.0], [0.0, 0.0], [3.0, 0.0], [3.2, 0.0]])
    predicts = np.array([ABSTAIN, 1, 0, 0, 1])
    radii = np.array([0.0, 0.2, 0.4, 0.0, 0.5])
    new_predicts, new_radii, changed = memory_consistency(inputs, predicts, radii)
    # row 2 would be inside an abstained row's "ball" if it had one: unchanged except for ball 1 (gap 0.3)
    # row 4 (3.2, r 0.5, class 1) contains the point (3, 0) of class 0: gap 0.2 - 0 -> radius 0.2
    assert new_predicts.tolist() == [ABSTAIN, 1, 0, 0, 1]
    assert new_radii == pytest.approx([0.0, 0.2, 0.3, 0.0, 0.2], abs=2e-6)
    assert changed.tolist() == [False, False, True, False, True]


def reference(inputs, predicts, radii):
    """ALGORITHMS.md 3b written as plainly as possible (pure Python loops); a changed radius is rounded down
    to 6 decimals, as the library writes it (later rows then see the rounded ball)."""
    balls, out_p, out_r = [], [], []
    for x, c, r in zip(inputs.tolist(), predicts.tolist(), radii.tolist()):
        if c != ABSTAIN:
            gaps = [(math.dist(x, xj) - rj, cj) for xj, cj, rj in balls if cj != c and math.dist(x, xj) < r + rj]
            if gaps:
                d, cj = min(gaps)
                c, r = (cj, -d) if d < 0 else (c, d)
                r = math.floor(r * 1e6) / 1e6
            balls.append((x, c, r))
        out_p.append(c)
        out_r.append(r)
    return np.array(out_p), np.array(out_r)


def test_matches_the_plain_reference_and_leaves_no_conflicting_balls():
    rng = np.random.default_rng(0)
    count = 700  # more than one block of rows
    inputs = rng.normal(size=(count, 5)) + 0.5
    predicts = rng.integers(-1, 4, size=count)
    radii = np.where(predicts >= 0, rng.uniform(0.0, 1.5, size=count), 0.0)
    new_predicts, new_radii, changed = memory_consistency(inputs, predicts, radii)
    expected_predicts, expected_radii = reference(inputs, predicts, radii)
    assert np.array_equal(new_predicts, expected_predicts)
    assert np.allclose(new_radii, expected_radii, rtol=0, atol=1.01e-6)  # rounding of the last digit only
    assert 50 < changed.sum() < count and np.array_equal(changed, (new_predicts != predicts) | (new_radii != radii))
    # the invariant: open balls of different classes never intersect
    keep = new_predicts >= 0
    x, c, r = inputs[keep], new_predicts[keep], new_radii[keep]
    distances = np.linalg.norm(x[:, None] - x[None], axis=-1)
    conflict = (c[:, None] != c[None]) & (distances < r[:, None] + r[None] - 1e-12)
    assert not conflict.any()
    assert np.array_equal(new_predicts[predicts == ABSTAIN], predicts[predicts == ABSTAIN])


def test_rejects_mismatched_rows():
    with pytest.raises(ValueError):
        memory_consistency(np.zeros((3, 2)), np.zeros(2, dtype=int), np.zeros(3))
    with pytest.raises(ValueError):
        memory_consistency(np.zeros((2, 2)), np.zeros(2, dtype=int), np.array([0.1, -1.0]))
