"""A certified sigma selector (ALGORITHMS.md 3d, SOUND.md 3d): guarantee ``sound``.

A trained selector network h_sel maps x to one of the levels sigma_1 < ... < sigma_K (trained by
``insta_rs.selector_training``, stored by ``insta_rs.checkpoints.save_selector``).
The instance-wise classifier being certified is

    G(x) = g_{s(x)}(x),   s(x) = g_sel(x) = argmax_k P[h_sel(x + sigma_sel e) = k],

with g_s the base classifier smoothed at level s. Per row, with one generator (all draws fresh):

1. CERTIFY(h_sel, sigma_sel, x, n0_sel, n_sel, alpha/2) (ALGORITHMS.md 1): level s and radius R_sel; if
   its lower bound is < 1/2 the row abstains (the classifier is not run).
2. CERTIFY(f, s, x, n0, n, alpha/2) with draws after the selector's: class y and radius R_cls; abstain if
   it abstains.
3. Answer y with radius min(R_sel, R_cls).

Why it is sound: inside the ball of radius R_sel, g_sel is constant (= s), so G = g_s there; inside
the ball of radius R_cls, g_s is constant (= y). Each statement holds with probability >= 1 - alpha/2,
both together with probability >= 1 - alpha (union bound). The level choice depends on x and the
selector's draws, but the classifier's bound uses draws independent of them, so it holds conditionally
on s. The selector is fixed before testing (a checkpoint), and it must belong to the classifier being
certified: ``prepare`` refuses a selector trained for another checkpoint (SHA-256 mismatch).

TSV columns added: ``level`` (index of the chosen level among the selector's increasing levels; the
candidate level when the selector abstains), ``radius_selector``, ``radius_classifier``,
``pA_lower_selector`` and ``limited_by`` (selector | classifier). The ``sigma`` column is the chosen level,
``pA_lower`` the classifier's bound, ``search_draws`` / ``search_time`` the selector's draws and seconds.
Radii use the sigma the noise was scaled by (float32), so a rounded sigma never enlarges a radius.

With ``rule="answer"`` (README "Guarantees" 3f; ``insta_rs.certificates.selector``) only the *answer* must
stay constant on the ball, not the level: per row,

1. the selector's n0_sel draws pick s; its n_sel fresh draws bound q_s from below and every other q_k from
   above, K statements at selector_alpha * alpha / K each; e_k = sigma_sel (PhiInv(q_lo_s) - PhiInv(q_hi_k)) / 2
   is how far the selector cannot switch to level k;
2. CERTIFY(f, s, x, n0, n) at (1 - selector_alpha) * alpha / K picks y and gives r_s; every level k != s
   that could bind (e_k < r_s) gets n fresh draws and the lower bound of p_k(y) at the same share, r_k;
3. answer y with R = min(r_s, min over k != s of max(e_k, r_k)); abstain if R <= 0.

All 2K statements hold together with probability >= 1 - alpha. A hesitant selector then costs only the
radii of the levels it hesitates between, where the level rule would stop at its small R_sel. Extra column
``levels_certified``: how many levels' classifiers were sampled (1 + the rivals); ``radius_selector`` is
min over k != s of e_k (the level is constant within it), ``limited_by`` ``classifier`` (r_s), ``rival``
(some r_k) or ``selector`` (some e_k).

PREDICT (``choose_sigma``): the level the smoothed selector's n0_sel draws pick (step 1's candidate); Cohen's
PREDICT then runs at that level with fresh draws. Its answer is g_s's at the picked level, not G's (a PREDICT
of G would also have to test the selector's choice and split alpha): guarantee ``instance``.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from ..certificates import ABSTAIN, cohen_radius, cp_lower, cp_upper, floor_to
from ..certificates.selector import answer_radius, switch_radii
from ..checkpoints import file_digest, load_selector
from ..errors import CheckpointError, ConfigError, DataError, check
from ..smoothing import Smooth, check_certify_settings, noise_sigma
from .base import RowResult, SearchContext, SigmaChoice, SigmaMethod


SEQUENTIAL_ANSWER = ("sigma_search.rule=answer certifies with a fixed number of draws: set certify.sampling=fixed, "
                     "or use sigma_search.rule=level")


def check_levels(levels, setting: str = "levels") -> tuple[float, ...]:
    """The level set Sigma as a sorted tuple of distinct finite numbers > 0; ConfigError naming ``setting``
    otherwise (empty, non-positive, repeated, or not numbers). Level k is always the k-th smallest."""
    try:
        values = [float(v) for v in levels] if not isinstance(levels, (str, bytes)) else []
    except (TypeError, ValueError):
        values = []
    shown = list(levels) if hasattr(levels, "__iter__") and not isinstance(levels, (str, bytes)) else levels
    check(len(values) >= 1 and all(math.isfinite(v) and v > 0 for v in values)
          and len(set(values)) == len(values) and not any(isinstance(v, bool) for v in shown or []),
          setting, shown, "a non-empty list of distinct noise levels > 0, e.g. [0.12, 0.25, 0.5, 1.0]")
    return tuple(sorted(values))


def _optional_count(value, setting: str) -> int | None:
    check(value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 1), setting, value,
          "null (the certify group's value) or an integer >= 1")
    return value


class SelectorSigma(SigmaMethod):
    """sigma(x) = the level the smoothed selector certifies at x; radius min(R_sel, R_cls) (SOUND.md 3d).

    ckpt_path: the selector.pt written by ``train=selector`` for the checkpoint being certified.
    selector_n0 / selector_n: the selector's selection and estimation draws (null: certify.n0 / certify.n).
    rule: ``level`` (SOUND.md 3d: the selector's level is certified constant on the ball) or ``answer``
        (3f: every level the selector could switch to on the ball is certified to give the same answer).
    selector_alpha: the share of alpha spent on the selector's statements (the classifier gets the rest).
    """

    name = "selector"
    guarantee = "sound"
    extra_columns = ("level", "radius_selector", "radius_classifier", "pA_lower_selector", "limited_by")
    RULES = ("level", "answer")

    def __init__(self, ckpt_path: str, selector_n0: int | None = None, selector_n: int | None = None,
                 experts=None, rule: str = "level", selector_alpha: float = 0.5):
        self.experts = experts
        check(rule in self.RULES, "rule", rule, " or ".join(self.RULES))
        check(isinstance(selector_alpha, (int, float)) and not isinstance(selector_alpha, bool)
              and 0 < selector_alpha < 1, "selector_alpha", selector_alpha, "a number in (0, 1), e.g. 0.5")
        self.rule, self.selector_alpha = rule, float(selector_alpha)
        if rule == "answer":
            self.extra_columns = SelectorSigma.extra_columns + ("levels_certified",)
        check(ckpt_path is not None and str(ckpt_path) not in ("", "???"), "ckpt_path", ckpt_path,
              "the selector.pt written by python train.py train=selector base_ckpt=PATH")
        self.ckpt_path = str(ckpt_path)
        self.selector_n0 = _optional_count(selector_n0, "selector_n0")
        self.selector_n = _optional_count(selector_n, "selector_n")
        self.model = None
        self.record: dict = {}
        self.levels: tuple[float, ...] = ()
        self.sigma = 0.0
        self._smooth: Smooth | None = None

    def prepare(self, context: SearchContext) -> None:
        """Load the selector (weights only) on context.device; refuse it unless it was trained for the
        classifier being certified (its recorded SHA-256 equals that of context.ckpt_path), and refuse the
        answer rule with sequential sampling."""
        if self.rule == "answer" and context.sequential:
            raise ConfigError(SEQUENTIAL_ANSWER)
        model, record = load_selector(self.ckpt_path, context.device)
        if context.ckpt_path is None:
            raise CheckpointError("the selector method needs the classifier's checkpoint path "
                                  "(SearchContext.ckpt_path) to check that the selector belongs to it")
        digest = file_digest(context.ckpt_path)
        if digest != record.get("base_sha256"):
            raise CheckpointError(f"the selector {self.ckpt_path!r} was trained for the classifier "
                                  f"{record.get('base_ckpt')!r} (sha256 {str(record.get('base_sha256'))[:12]}...), not "
                                  f"for {str(context.ckpt_path)!r} (sha256 {digest[:12]}...): train a selector "
                                  "for this checkpoint with train=selector base_ckpt=PATH")
        if record.get("experts_sha256") != context.experts_sha256:
            wanted = "the experts it was trained with" if record.get("experts_sha256") else "no experts"
            raise CheckpointError(f"the selector {self.ckpt_path!r} was trained for {wanted}, not for this "
                                  "experts: certify with the experts of its train=selector run")
        info = getattr(context.source, "info", None)
        shape = tuple(record["dataset_info"]["input_shape"])
        if info is not None and tuple(info.input_shape) != shape:
            raise DataError(f"the selector takes inputs of shape {shape} but the data set {info.name!r} has "
                            f"{tuple(info.input_shape)}: certify on the data set the classifier was trained on")
        self.set_selector(model, record["levels"], record["sigma"])
        self.record = record

    def resume_identity(self) -> dict:
        """What a resumed certification must share with the interrupted one besides the settings: the
        selector file's SHA-256, so a selector retrained at the same path cannot be mixed into a resumed run."""
        return {"selector_sha256": file_digest(Path(self.ckpt_path).expanduser())}

    def set_selector(self, model: torch.nn.Module, levels, sigma: float) -> None:
        """Use this selector network (one output per level, levels in increasing order) smoothed at sigma.
        ``prepare`` calls it with the checkpoint's network; tests and notebooks may call it directly."""
        self.levels = check_levels(levels, "levels")
        check(list(self.levels) == [float(v) for v in levels], "levels", list(levels),
              "levels in increasing order (the selector's output k is the k-th smallest level)")
        check_certify_settings(float(sigma), 1, 1, 0.5)
        self.model, self.sigma, self._smooth = model.eval(), float(sigma), None

    def selector_smooth(self, like: Smooth) -> Smooth:
        """The smoothed selector (float32, the classifier's batch size and device)."""
        if self.model is None:
            raise RuntimeError("SelectorSigma.prepare must run before certify")
        if self._smooth is None or self._smooth.batch_size != like.batch_size or self._smooth.device != like.device:
            self._smooth = Smooth(self.model.to(like.device), len(self.levels), batch_size=like.batch_size,
                                  device=like.device)
        return self._smooth

    def choose_sigma(self, smooth: Smooth, x: torch.Tensor, n0: int, alpha: float,
                     generator: torch.Generator) -> SigmaChoice:
        """The selector's candidate level from its n0_sel draws (module docstring), guarantee ``instance``."""
        draws = self.selector_n0 or n0
        level = int(self.selector_smooth(smooth).sample_counts(x, self.sigma, draws, generator).argmax())
        return SigmaChoice(self.levels[level], "instance", draws)

    def certify(self, smooth: Smooth, x: torch.Tensor, n0: int, n: int, alpha: float,
                generator: torch.Generator) -> RowResult:
        """Steps 1-3 of the module docstring for one input; ``smooth`` is the base classifier."""
        check_certify_settings(1.0, n0, n, alpha)
        if self.rule == "answer":
            return self.certify_answer(smooth, x, n0, n, alpha, generator)
        half = alpha * self.selector_alpha
        sel_n0, sel_n = self.selector_n0 or n0, self.selector_n or n
        start = time.perf_counter()
        selector = self.selector_smooth(smooth)
        # CERTIFY of the selector (ALGORITHMS.md 1) at alpha/2: n0 draws pick the level, n fresh draws bound it
        # (sequentially when the classifier is: the same plan, its own share of alpha); its radius uses the
        # float32 sigma the noise was scaled by
        selector.sequential = smooth.sequential
        selected = selector.certify(x, self.sigma, sel_n0, sel_n, half, generator)
        candidate, p_sel, r_sel = selected.candidate, selected.p_lower, selected.radius
        level = self.levels[candidate]
        search_time = time.perf_counter() - start
        extra = {"level": candidate, "radius_selector": floor_to(r_sel), "pA_lower_selector": floor_to(p_sel)}
        if selected.predict == ABSTAIN:
            return RowResult(ABSTAIN, 0.0, level, 0.0, self.guarantee, search_time=search_time,
                             search_draws=sel_n0 + selected.n,
                             extra={**extra, "radius_classifier": 0.0, "limited_by": "selector"})
        cert = smooth.certify(x, level, n0, n, alpha - half, generator)
        limited_by = "selector" if r_sel <= cert.radius else "classifier"
        if cert.predict == ABSTAIN:
            radius, limited_by = 0.0, "classifier"
        else:
            radius = min(r_sel, cert.radius)
        return RowResult(cert.predict, radius, level, cert.p_lower, self.guarantee, search_time=search_time,
                         search_draws=sel_n0 + selected.n,
                         extra={**extra, "radius_classifier": floor_to(cert.radius), "limited_by": limited_by})

    def certify_answer(self, smooth: Smooth, x: torch.Tensor, n0: int, n: int, alpha: float,
                       generator: torch.Generator) -> RowResult:
        """Steps 1-3 of the answer rule (module docstring) for one input; ``smooth`` is the base classifier."""
        if smooth.sequential is not None:
            raise ConfigError(SEQUENTIAL_ANSWER)
        levels, sel_n0, sel_n = self.levels, self.selector_n0 or n0, self.selector_n or n
        share_sel = alpha * self.selector_alpha / len(levels)
        share_cls = alpha * (1.0 - self.selector_alpha) / len(levels)
        start = time.perf_counter()
        selector = self.selector_smooth(smooth)
        chosen = int(selector.sample_counts(x, self.sigma, sel_n0, generator).argmax())
        counts = selector.sample_counts(x, self.sigma, sel_n, generator).cpu().numpy()
        q_lower = float(cp_lower(counts[chosen], sel_n, share_sel))
        switch = switch_radii(noise_sigma(self.sigma), chosen, q_lower, cp_upper(counts, sel_n, share_sel))
        search_time = time.perf_counter() - start
        others = [k for k in range(len(levels)) if k != chosen]
        extra = {"level": chosen, "radius_selector": floor_to(float(switch[others].min())) if others else math.inf,
                 "pA_lower_selector": floor_to(q_lower)}
        cert = smooth.certify(x, levels[chosen], n0, n, share_cls, generator)
        radii = [math.inf] * len(levels)
        radii[chosen] = cert.radius
        rivals = [k for k in others if switch[k] < cert.radius] if cert.predict != ABSTAIN else []
        if rivals:
            rows = x.unsqueeze(0).expand(len(rivals), *x.shape)
            sigmas = torch.tensor([levels[k] for k in rivals], dtype=torch.float32)
            hits = smooth.sample_counts(rows, sigmas, n, generator)[:, cert.predict].cpu().numpy()
            for k, p_lower in zip(rivals, cp_lower(hits, n, share_cls)):
                radii[k] = cohen_radius(noise_sigma(levels[k]), float(p_lower))
        radius, binding = answer_radius(switch, radii, chosen)
        extra.update(radius_classifier=floor_to(cert.radius), levels_certified=1 + len(rivals),
                     limited_by="classifier" if binding == chosen else
                     "selector" if switch[binding] >= radii[binding] else "rival")
        draws = sel_n0 + sel_n
        if cert.predict == ABSTAIN or not radius > 0:
            return RowResult(ABSTAIN, 0.0, levels[chosen], cert.p_lower, self.guarantee, search_time=search_time,
                             search_draws=draws, extra=extra)
        return RowResult(cert.predict, radius, levels[chosen], cert.p_lower, self.guarantee,
                         search_time=search_time, search_draws=draws, extra=extra)
