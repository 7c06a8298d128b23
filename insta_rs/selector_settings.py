"""The ``selector`` config group: ``SelectorSettings``, the settings of the sigma selector's training targets
(``insta_rs.selector_labels``) and of its fit (``insta_rs.selector_training``), with every default and check.

Its own module so that the labels and the training, which both read it, import it from below instead of from
each other.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .errors import check, settings_from_config
from .search.selector import check_levels

LABEL_MODES = ("nearest", "best_radius")
"""How the selector's targets are made (``insta_rs.selector_labels``)."""


def _check_positive(value, setting: str, integer: bool = False) -> None:
    if integer:
        check(isinstance(value, int) and not isinstance(value, bool) and value >= 1, setting, value, "an integer >= 1")
    else:
        check(isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0,
              setting, value, "a finite number > 0")


@dataclass
class SelectorSettings:
    """The ``selector`` config group (every default lives here; checked when built).

    levels: the noise levels it chooses between (pixel units), kept sorted: class k = k-th smallest.
    sigma: sigma_sel, the selector's own smoothing noise (training augmentation and certification).
    label_mode: ``best_radius`` (each level's estimated radius by the base model) or ``nearest`` (the
        table's sigma_i rounded in log space); see ``insta_rs.selector_labels``.
    draws, soft_labels, temperature, eps: ``best_radius`` only: draws per (example, level); softmax
        targets softmax(Rhat / temperature) or one-hot argmax; the phat clamp (None: 1 / (2 * draws)).
    drop_unreached: ``best_radius`` only: leave out the training inputs whose true label no level reaches
        (every Rhat_k <= 0); they would teach the selector the least bad of several wrong levels.
    balance_levels: sample training inputs so that every level (a target's argmax) weighs the same.
    consistency, eta: 0 trains on one noisy copy per input (cross-entropy); lambda > 0 trains on two copies
        with consistency regularisation (``insta_rs.losses.consistency_objective``: cross-entropy + lambda KL
        to the copies' mean + eta times its entropy; Dual RS trains its selector with lambda 40, eta 0.5), so
        the smoothed selector is confident and its radius large.
    epochs, lr, batch_size, momentum, weight_decay: SGD with a cosine schedule.
    width, hidden: the selector network's SmallCNN channels and hidden units.
    pool: k > 1 puts a k x k block average in front of the network (``insta_rs.models.BlockAverage``): it sees
        the noise at sigma_sel / k. H and W must be multiples of k.
    """

    levels: list[float] = field(default_factory=lambda: [0.12, 0.25, 0.5, 1.0])
    sigma: float = 0.25
    label_mode: str = "best_radius"
    draws: int = 32
    soft_labels: bool = True
    temperature: float = 0.1
    eps: float | None = None
    drop_unreached: bool = False
    balance_levels: bool = False
    consistency: float = 0.0
    eta: float = 0.5
    epochs: int = 10
    lr: float = 0.05
    batch_size: int = 128
    momentum: float = 0.9
    weight_decay: float = 5e-4
    width: int = 16
    hidden: int = 64
    pool: int = 1

    def __post_init__(self) -> None:
        self.validate()

    @classmethod
    def from_dict(cls, values: dict) -> "SelectorSettings":
        """Build from the ``selector`` config; an unknown key is a ConfigError naming it."""
        return settings_from_config(cls, values, "selector", "a selector setting")

    def validate(self) -> None:
        """ConfigError naming the first invalid setting (``selector.<name>=<value> is invalid: ...``)."""
        self.levels = list(check_levels(self.levels))
        _check_positive(self.sigma, "sigma")
        check(self.label_mode in LABEL_MODES, "label_mode", self.label_mode, " or ".join(LABEL_MODES))
        _check_positive(self.draws, "draws", integer=True)
        check(isinstance(self.soft_labels, bool), "soft_labels", self.soft_labels, "true or false")
        _check_positive(self.temperature, "temperature")
        check(self.eps is None or (isinstance(self.eps, float) and 0 < self.eps < 0.5), "eps", self.eps,
              "null (1 / (2 * draws)) or a number in (0, 0.5)")
        for name in ("drop_unreached", "balance_levels"):
            check(isinstance(getattr(self, name), bool), name, getattr(self, name), "true or false")
        check(not self.drop_unreached or self.label_mode == "best_radius", "drop_unreached", self.drop_unreached,
              "false with label_mode=nearest (only best_radius estimates each level's radius)")
        for name in ("consistency", "eta"):
            value = getattr(self, name)
            check(isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
                  and value >= 0, name, value, "a number >= 0")
        for name in ("epochs", "batch_size", "width", "hidden", "pool"):
            _check_positive(getattr(self, name), f"{name}", integer=True)
        _check_positive(self.lr, "lr")
        check(isinstance(self.momentum, (int, float)) and 0 <= self.momentum < 1, "momentum", self.momentum,
              "a number in [0, 1)")
        check(isinstance(self.weight_decay, (int, float)) and self.weight_decay >= 0, "weight_decay",
              self.weight_decay, "a number >= 0")
