"""Semi-elastic sigma(x) with a sound certificate (Sukenik, Kuvshinov & Gunnemann, ICML 2022).

ALGORITHMS.md 3c, SOUND.md 3c. The noise level of input x is

    sigma(x) = clip( sigma_b * exp(r * (dbar_k(x) - m)), sigma_min, sigma_max )

with dbar_k(x) the mean L2 distance (pixel units, inputs flattened) from x to its k nearest training
inputs. dbar_k is 1-Lipschitz (the sum of the k smallest of 1-Lipschitz functions is the minimum over
k-subsets of k-Lipschitz sums), so log sigma is r-Lipschitz: sigma is *r-semi-elastic*. Clipping to
[sigma_min, sigma_max] keeps that (clipping is 1-Lipschitz in log space). m is a constant fixed before
any test input is seen: the config value, or by default the median of the leave-one-out dbar_k over a
seeded sample of training inputs. The rule depends on the training inputs only, never on test inputs,
labels or Monte Carlo draws.

Each row: CERTIFY at sigma0 = sigma(x) (ALGORITHMS.md 1), then the radius is replaced by
``semi_elastic_radius(pA_lower, sigma0, r, d)``: the certificate of the instance-wise classifier
x -> g_{sigma(x)}(x), guarantee ``sound`` -- ONLY under the declared r. Changing r (or the rule)
without changing the declared r voids it. The extra column ``cohen_radius`` is the radius Cohen's
formula gives at sigma0, for comparison (it is not a certificate of the instance-wise classifier).
"""

from __future__ import annotations

import math
import time

import torch

from ..certificates import ABSTAIN, floor_to
from ..certificates.semi_elastic import semi_elastic_radius
from ..errors import ConfigError, DataError, check
from ..smoothing import Smooth, noise_sigma
from .base import RowResult, SearchContext, SigmaChoice, SigmaMethod

SIGMA_LOG_SLACK = 1e-6
"""Extra log-sigma spread the radius covers when r > 0: the noise is scaled in float32, so the sigma
actually used is sigma(x) rounded to float32 (relative error <= 2^-24), a rule that is r-semi-elastic only
up to this additive slack (rounding is a step function). The radius is centred on the float32 sigma at x,
so the slack covers both roundings, at x and at x' (2 * 2^-24 < 1e-6)."""

_CHUNK_ELEMENTS = 1 << 24


def _positive_or_none(value, setting: str) -> float | None:
    if value is None:
        return None
    check(isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0,
          setting, value, "null or a finite number > 0")
    return float(value)


class SemiElasticSigma(SigmaMethod):
    """sigma(x) = clip(sigma_b exp(r (dbar_k(x) - m)), sigma_min, sigma_max); radius of SOUND.md 3c.

    sigma_b: base noise level (null: the sigma the checkpoint was trained with). r: the declared
    semi-elasticity rate (>= 0); the certificate is sound only for it. k: neighbours in dbar_k.
    m: centring constant (null: median leave-one-out dbar_k over ``m_sample`` training inputs).
    sigma_min/sigma_max: optional clipping. max_train: use at most this many training inputs (a seeded
    random subset; null: all). seed: the seed of those subsets.
    """

    name = "semi_elastic"
    guarantee = "sound"
    extra_columns = ("cohen_radius",)

    def __init__(self, sigma_b: float | None = None, r: float = 0.01, k: int = 10, m: float | None = None,
                 sigma_min: float | None = None, sigma_max: float | None = None, max_train: int | None = None,
                 m_sample: int = 1000, seed: int = 0):
        self.sigma_b = _positive_or_none(sigma_b, "sigma_b")
        check(isinstance(r, (int, float)) and not isinstance(r, bool) and math.isfinite(r) and r >= 0,
              "r", r, "a finite number >= 0 (the declared semi-elasticity rate)")
        self.r = float(r)
        check(isinstance(k, int) and not isinstance(k, bool) and k >= 1, "k", k, "an integer >= 1")
        self.k = k
        check(m is None or (isinstance(m, (int, float)) and not isinstance(m, bool) and math.isfinite(m)),
              "m", m, "null (median over training inputs) or a finite number")
        self.m = None if m is None else float(m)
        self.sigma_min = _positive_or_none(sigma_min, "sigma_min")
        self.sigma_max = _positive_or_none(sigma_max, "sigma_max")
        if self.sigma_min is not None and self.sigma_max is not None:
            check(self.sigma_min <= self.sigma_max, "sigma_min", sigma_min,
                  f"a value <= sigma_max={sigma_max}")
        check(max_train is None or (isinstance(max_train, int) and max_train > k), "max_train",
              max_train, f"null (all training inputs) or an integer > k={k}")
        self.max_train = max_train
        check(isinstance(m_sample, int) and m_sample >= 1, "m_sample", m_sample, "an integer >= 1")
        self.m_sample = m_sample
        check(isinstance(seed, int), "seed", seed, "an integer")
        self.seed = seed
        self.train_inputs: torch.Tensor | None = None
        self.dim: int | None = None

    # -- the rule -------------------------------------------------------------------------------------

    def prepare(self, context: SearchContext) -> None:
        """Load the training inputs (flattened, on context.device), fill in sigma_b and m."""
        if self.sigma_b is None:
            check(context.trained_sigma is not None and context.trained_sigma > 0, "sigma_b", None,
                  "a number > 0 (the checkpoint was not trained at one sigma: set sigma_b)")
            self.sigma_b = float(context.trained_sigma)
        if context.source is None:
            raise ConfigError("sigma_search=semi_elastic needs the data set's training split: the certification "
                              "context has no data source")
        dataset = context.source.split("train")
        loader = torch.utils.data.DataLoader(dataset, batch_size=1024, shuffle=False, num_workers=0)
        chunks = [batch[0].reshape(batch[0].shape[0], -1).to(torch.float32) for batch in loader]
        if not chunks:
            raise DataError("sigma_search=semi_elastic needs training inputs, but the training split is empty")
        self.set_reference(torch.cat(chunks), device=context.device)

    def set_reference(self, train_inputs: torch.Tensor, device: torch.device | str = "cpu") -> None:
        """Use these training inputs (N, ...) for dbar_k (at most ``max_train`` of them) and compute m if unset."""
        flat = train_inputs.reshape(train_inputs.shape[0], -1).to(torch.float32)
        generator = torch.Generator().manual_seed(self.seed)
        if self.max_train is not None and flat.shape[0] > self.max_train:
            keep = torch.randperm(flat.shape[0], generator=generator)[: self.max_train].sort().values
            flat = flat[keep]
        if flat.shape[0] <= self.k:
            raise DataError(f"k={self.k} needs more than {self.k} training inputs, "
                            f"but only {flat.shape[0]} are available: lower k")
        self.train_inputs = flat.to(device)
        self.dim = int(flat.shape[1])
        if self.m is None:
            self.m = self._median_leave_one_out(generator)

    def _median_leave_one_out(self, generator: torch.Generator) -> float:
        """Median of dbar_k over a seeded sample of training inputs, each excluding itself. Only a
        constant, so float32 matrix products are precise enough."""
        train = self.train_inputs
        count = train.shape[0]
        sample = torch.randperm(count, generator=generator)[: min(self.m_sample, count)].to(train.device)
        values = []
        rows = max(1, _CHUNK_ELEMENTS // max(count, 1))
        for start in range(0, sample.numel(), rows):
            chosen = sample[start:start + rows]
            dist = torch.cdist(train[chosen], train)
            dist[torch.arange(chosen.numel(), device=train.device), chosen] = float("inf")
            values.append(dist.topk(self.k, dim=1, largest=False).values.mean(dim=1))
        return float(torch.cat(values).median())

    @torch.no_grad()
    def mean_knn_distance(self, x: torch.Tensor) -> torch.Tensor:
        """dbar_k for a batch x of shape (B, ...) with d values per row -> (B,) float64, from exact float64
        differences (no |a|^2 + |b|^2 - 2ab cancellation), so the computed rule is 1-Lipschitz to rounding."""
        if self.train_inputs is None:
            raise RuntimeError("SemiElasticSigma.prepare (or set_reference) must run before sigma_of")
        train = self.train_inputs
        flat = x.reshape(-1, self.dim).to(train.device, torch.float64)
        rows = max(1, _CHUNK_ELEMENTS // self.dim)
        out = []
        for point in flat:
            dist = torch.cat([(train[s:s + rows].to(torch.float64) - point).square_().sum(dim=1).sqrt_()
                              for s in range(0, train.shape[0], rows)])
            out.append(dist.topk(self.k, largest=False).values.mean())
        return torch.stack(out)

    def sigma_of(self, x: torch.Tensor) -> torch.Tensor:
        """sigma(x) (float64) for a batch x of shape (B, ...) with d values per row -> (B,)."""
        if self.dim is not None and x.numel() % self.dim != 0:
            raise DataError(f"an input of {x.numel()} values does not match the training inputs' dimension {self.dim}")
        dbar = self.mean_knn_distance(x)
        sigma = self.sigma_b * torch.exp(self.r * (dbar - self.m))
        if self.sigma_min is not None or self.sigma_max is not None:
            sigma = sigma.clamp(min=self.sigma_min, max=self.sigma_max)
        return sigma

    # -- certification --------------------------------------------------------------------------------

    def choose_sigma(self, smooth: Smooth, x: torch.Tensor, n0: int, alpha: float,
                     generator: torch.Generator) -> SigmaChoice:
        """sigma(x), a function of x alone (no draws): PREDICT there answers for the instance-wise classifier
        x -> g_{sigma(x)}(x), guarantee ``sound`` (for any r: a PREDICT claims nothing about neighbours)."""
        return SigmaChoice(self._sigma0(x), "sound")

    def _sigma0(self, x: torch.Tensor) -> float:
        if x.numel() != self.dim:
            raise DataError(f"an input of {x.numel()} values does not match the training inputs' dimension {self.dim}")
        return float(self.sigma_of(x.unsqueeze(0))[0])

    def certify(self, smooth: Smooth, x: torch.Tensor, n0: int, n: int, alpha: float,
                generator: torch.Generator) -> RowResult:
        """CERTIFY at sigma0 = sigma(x), radius of SOUND.md 3c under the declared r (guarantee ``sound``)."""
        start = time.time()
        sigma0 = self._sigma0(x)
        choose_time = time.time() - start
        cert = smooth.certify(x, sigma0, n0, n, alpha, generator)
        if cert.predict == ABSTAIN:
            radius = 0.0
        else:
            # the radius is that of the noise actually drawn at x: sigma0 rounded to float32, as for every
            # method (r = 0: one constant sigma, so no slack and Cohen's radius at the float32 sigma exactly;
            # r > 0: the slack covers the float32 rounding of sigma(x') at the neighbours, SIGMA_LOG_SLACK)
            slack = SIGMA_LOG_SLACK if self.r > 0 else 0.0
            radius = semi_elastic_radius(cert.p_lower, noise_sigma(sigma0), self.r, self.dim, log_slack=slack)
        return RowResult(cert.predict, radius, sigma0, cert.p_lower, self.guarantee, search_time=choose_time,
                         search_draws=0, extra={"cohen_radius": floor_to(cert.radius)})
