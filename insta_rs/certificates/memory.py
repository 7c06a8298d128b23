"""Memory-based consistency over the processed rows (ALGORITHMS.md 3b, SOUND.md 3b): guarantee ``memory``.

Rows are processed in index order, keeping the certified balls (x_j, c_j, R_j) of the rows already
processed (after their own update). For a new row (x, c, R) that did not abstain, let J be the earlier
balls of another class that overlap its ball, ||x - x_j|| < R + R_j with c_j != c. If J is empty the row
is unchanged. Otherwise d = min over J of (||x - x_j|| - R_j):
- d < 0: x lies inside the earlier ball j of the minimum, whose class must win: the row becomes
  (c_j, |d|), a ball inside ball j;
- d >= 0: the row keeps c with radius d, the largest radius that touches no earlier ball of another class.
Afterwards certified (open) balls of different classes never intersect over the processed set
(Alfarra et al., data-dependent randomized smoothing). Abstained rows (predict = ABSTAIN) stay abstained
and add no ball; a row with radius 0 adds the single point x (it conflicts with no ball unless inside one).

This is consistency with respect to the processed sequence only, never a worst-case certificate: label
its rows ``memory``. Changed radii are rounded down (``floor_to``).

Distances: candidate overlaps are found with float64 Gram products for a whole block of rows (fast),
with a tolerance that only ever admits *more* candidates; every candidate's distance is then recomputed
from the exact difference x - x_j in float64, so a radius never rests on a cancellation-prone distance.
"""

from __future__ import annotations

import numpy as np

from .bounds import ABSTAIN, floor_to

_BLOCK = 256


def memory_consistency(inputs, predicts, radii) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ALGORITHMS.md 3b over rows given in index order.

    inputs: (N, D) flattened inputs (pixel units); predicts: (N,) classes, ABSTAIN = -1; radii: (N,).
    Returns (new_predicts (N,) int64, new_radii (N,) float64, changed (N,) bool), changed where the class
    or the radius differs from the input.
    """
    inputs = np.asarray(inputs, dtype=np.float64)
    predicts = np.asarray(predicts, dtype=np.int64).reshape(-1).copy()
    radii = np.asarray(radii, dtype=np.float64).reshape(-1).copy()
    count = predicts.size
    if inputs.ndim != 2 or inputs.shape[0] != count or radii.size != count:
        raise ValueError(f"memory pass: inputs {inputs.shape}, predicts ({count},) and radii ({radii.size},) "
                         f"must describe the same rows")
    if np.any(~np.isfinite(radii)) or np.any(radii < 0):
        raise ValueError("memory pass: radii must be finite and >= 0")
    original_predicts, original_radii = predicts.copy(), radii.copy()
    has_ball = predicts != ABSTAIN
    squared_norms = np.einsum("ij,ij->i", inputs, inputs)
    for start in range(0, count, _BLOCK):
        stop = min(start + _BLOCK, count)
        # approximate squared distances from the block's rows to every row before the block's end
        gram = inputs[start:stop] @ inputs[:stop].T
        approx = squared_norms[start:stop, None] + squared_norms[None, :stop] - 2.0 * gram
        tolerance = 1e-9 * (squared_norms[start:stop, None] + squared_norms[None, :stop]) + 1e-12
        for i in range(start, stop):
            if not has_ball[i]:
                continue
            c, radius = predicts[i], radii[i]
            earlier = np.flatnonzero(has_ball[:i] & (predicts[:i] != c))
            if earlier.size == 0:
                continue
            reach = radius + radii[earlier]
            near = earlier[approx[i - start, earlier] < reach * reach + tolerance[i - start, earlier]]
            if near.size == 0:
                continue
            distances = np.linalg.norm(inputs[near] - inputs[i], axis=1)
            overlap = distances < radius + radii[near]
            if not np.any(overlap):
                continue
            near, distances = near[overlap], distances[overlap]
            gaps = distances - radii[near]
            j = int(gaps.argmin())
            d = float(gaps[j])
            if d < 0:
                predicts[i], radii[i] = predicts[near[j]], floor_to(-d)
            else:
                radii[i] = floor_to(d)
    changed = (predicts != original_predicts) | (radii != original_radii)
    return predicts, radii, changed
