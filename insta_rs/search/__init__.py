"""How a certification run chooses sigma for each input (the ``sigma_search`` config group).

Each method has a ``certify(smooth, x, n0, n, alpha, generator) -> RowResult`` and a ``guarantee``
(ALGORITHMS.md section 3). Config files name a class by its full path, e.g.
``_target_: insta_rs.search.base.FixedSigma``.
- ``base``: RowResult, SearchContext, FixedSigma (Cohen et al.'s one sigma; ``sound``).
- ``insta_rs``: InstaRSSearch, the Insta-RS multiple-start search (ALGORITHMS.md 2; ``instance``).
- ``finite_set``: CascadeSigma (``cascade``) and BestLevelSigma (``grid``) over fixed levels
  (ALGORITHMS.md 3a, SOUND.md 3a; ``sound``).
- ``semi_elastic``: SemiElasticSigma, sigma(x) with a declared semi-elasticity r (ALGORITHMS.md 3c; ``sound``).
"""

from .base import FixedSigma, RowResult, SearchContext, SigmaMethod
from .finite_set import BestLevelSigma, CascadeSigma
from .insta_rs import InstaRSSearch, SearchOutcome
from .semi_elastic import SemiElasticSigma

__all__ = ["BestLevelSigma", "CascadeSigma", "FixedSigma", "InstaRSSearch", "RowResult", "SearchContext",
           "SearchOutcome", "SemiElasticSigma", "SigmaMethod"]
