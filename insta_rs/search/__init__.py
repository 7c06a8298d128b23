"""How a certification run chooses sigma for each input (the ``sigma_search`` config group).

Each method has a ``certify(smooth, x, n0, n, alpha, generator) -> RowResult`` and a ``guarantee``
(ALGORITHMS.md section 3). Config files name a class by its full path, e.g.
``_target_: insta_rs.search.base.FixedSigma``.
- ``base``: RowResult, SearchContext, FixedSigma (Cohen et al.'s one sigma; ``sound``).
"""

from .base import FixedSigma, RowResult, SearchContext

__all__ = ["FixedSigma", "RowResult", "SearchContext"]
