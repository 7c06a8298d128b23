"""The interface every sigma-selection method implements, and the simplest one.

A method certifies one input and returns a ``RowResult``: the answer, its radius, the sigma used and
the guarantee the radius carries (ALGORITHMS.md section 3: ``sound``, ``instance`` or ``memory``).
Before the first row, ``insta_rs.certification.run`` calls ``prepare(context)`` once, giving the method what it may
need beyond the input (the training data, the device, the trained run's config).
``FixedSigma`` is Cohen et al.'s single global sigma (ALGORITHMS.md section 1).

For PREDICT (``certify.mode=predict``) a method only chooses sigma (``choose_sigma``); Cohen's PREDICT then
runs at that sigma with the generator's later, fresh draws, so its answer is g_sigma(x) or ABSTAIN, wrong with
probability at most alpha, whatever the choice saw. The label says which classifier that answer is of:
``sound`` when sigma is a function of x alone (fixed, semi_elastic): the instance-wise classifier
x -> g_{sigma(x)}(x) itself (a PREDICT claims nothing about neighbours, so semi_elastic's r plays no part);
``instance`` when sigma was chosen from noise draws (insta_rs, best_level, grid, cascade, selector): the
fixed-sigma classifier g_sigma at the chosen sigma, as the Insta-RS certificates are (ALGORITHMS.md 2).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch

from ..errors import ConfigError
from ..smoothing import Smooth, check_certify_settings


@dataclass
class RowResult:
    """One certified input. predict is ABSTAIN (-1) with radius 0 when the method abstains.
    search_draws/search_time: noise draws and seconds spent choosing sigma (0 for a fixed sigma).
    extra: method-specific columns (e.g. the chosen level and what limited the radius)."""

    predict: int
    radius: float
    sigma: float
    p_lower: float
    guarantee: str
    search_time: float = 0.0
    search_draws: int = 0
    extra: dict = field(default_factory=dict)


class SigmaChoice(NamedTuple):
    """The sigma a method picks for PREDICT at one input, the label its PREDICT rows carry (module docstring),
    and the noise draws spent choosing it."""

    sigma: float
    guarantee: str
    search_draws: int = 0


@dataclass
class SearchContext:
    """What a method may use besides the input: the data source (its ``split("train")`` for methods
    that look at training inputs), the number of classes, the device, the one sigma the model was trained
    at (None when it was trained across several: ``TrainedRun.trained_sigma``), and the path of the
    classifier's checkpoint, {level: SHA-256} of the per-level experts when they replace its model, and whether
    the certificates draw in stages (``certify.sampling=sequential``)."""

    source: Any = None
    num_classes: int = 0
    device: torch.device | str = "cpu"
    trained_sigma: float | None = None
    ckpt_path: str | None = None
    experts_sha256: dict | None = None
    sequential: bool = False


class SigmaMethod:
    """Base class. ``extra_columns`` are method-specific TSV columns (after the standard ones), filled
    from ``RowResult.extra``; ``guarantee`` labels every row the method writes."""

    name = "base"
    guarantee = "sound"
    extra_columns: tuple[str, ...] = ()
    experts = None
    """{level: checkpoint}: one base classifier per level (``insta_rs.experts``) instead of ckpt_path's model;
    ``insta_rs.certification.run`` loads them. None: ckpt_path's model at every sigma."""
    batches_rows = False
    """True when ``certify_many`` shares forward passes between inputs (the certification loop then
    hands it as many inputs as fit one batch of draws)."""

    def prepare(self, context: SearchContext) -> None:
        """Called once before the first row. Default: nothing to prepare."""

    def resume_identity(self) -> dict:
        """What a resumed run must share with the rows already written, beyond the method's config: e.g. the
        SHA-256 of a file the method reads. Added to the settings stored beside certify.tsv. Default: nothing."""
        return {}

    def certify(self, smooth: Smooth, x: torch.Tensor, n0: int, n: int, alpha: float,
                generator: torch.Generator) -> RowResult:
        raise NotImplementedError

    def certify_many(self, smooth: Smooth, xs: list[torch.Tensor], n0: int, n: int, alpha: float,
                     generators: list[torch.Generator]) -> list[RowResult]:
        """Certify several inputs, input i with ``generators[i]`` alone; row i equals
        ``certify(smooth, xs[i], n0, n, alpha, generators[i])``. Default: one after the other."""
        return [self.certify(smooth, x, n0, n, alpha, g) for x, g in zip(xs, generators)]

    def choose_sigma(self, smooth: Smooth, x: torch.Tensor, n0: int, alpha: float,
                     generator: torch.Generator) -> SigmaChoice:
        """The sigma PREDICT runs at for input x, chosen as this method chooses it for CERTIFY, with draws from
        ``generator`` (n0: the draws a rule over levels may spend per level). Default: not supported."""
        raise ConfigError(f"sigma_search={self.name} cannot choose a sigma for certify.mode=predict: use "
                          "sigma_search=fixed or insta_rs")


class FixedSigma(SigmaMethod):
    """One sigma for every input: CERTIFY of ALGORITHMS.md 1. Guarantee ``sound``."""

    name = "fixed"
    guarantee = "sound"
    batches_rows = True

    def __init__(self, sigma: float, experts=None):
        check_certify_settings(sigma, 1, 1, 0.5)
        self.sigma = float(sigma)
        self.experts = experts

    @property
    def levels(self) -> list[float]:
        return [self.sigma]

    def certify(self, smooth: Smooth, x: torch.Tensor, n0: int, n: int, alpha: float,
                generator: torch.Generator) -> RowResult:
        cert = smooth.certify(x, self.sigma, n0, n, alpha, generator)
        return RowResult(cert.predict, cert.radius, self.sigma, cert.p_lower, self.guarantee)

    def choose_sigma(self, smooth: Smooth, x: torch.Tensor, n0: int, alpha: float,
                     generator: torch.Generator) -> SigmaChoice:
        """The one sigma: PREDICT of ALGORITHMS.md 1, guarantee ``sound``."""
        return SigmaChoice(self.sigma, "sound")

    def certify_many(self, smooth: Smooth, xs: list[torch.Tensor], n0: int, n: int, alpha: float,
                     generators: list[torch.Generator]) -> list[RowResult]:
        certs = smooth.certify_batch(xs, [self.sigma] * len(xs), n0, n, alpha, generators)
        return [RowResult(c.predict, c.radius, self.sigma, c.p_lower, self.guarantee) for c in certs]
