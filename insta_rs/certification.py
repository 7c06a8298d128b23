"""Certifying a test split: the one path from a trained run to its rows and reports (ALGORITHMS.md 1-3, 6).

``run`` does all the work of ``certify.py``: it builds the smoothed model and the row certifier, certifies
every selected input not done yet through Lightning's ``trainer.predict`` (one rank or many: the same
mechanism, insta_rs.distributed), merges the rows (insta_rs.certification_file), runs the memory pass when
asked, and writes the reports. It reads the finished TSV once and returns its rows and the summary.

``Certifier`` turns inputs into TSV rows: the sigma-selection method certifies each with the row's own
generator (``row_generator(seed, idx)``), so a row depends on (seed, idx, settings) alone and a resumed or
sharded run writes the same rows as an uninterrupted one. Several inputs share forward passes when a method
supports it (``SigmaMethod.certify_many``); their draws still come from their own generators.

``mode=predict`` runs Cohen et al.'s PREDICT instead (ALGORITHMS.md 1) through the same path: the method
chooses sigma (``SigmaMethod.choose_sigma``), PREDICT answers at it, and the rows go to ``predict.tsv``
(``PREDICT_COLUMNS``: no radius); the reports are summary.json and table.md (accuracy and abstain rate).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch

from . import analysis, certification_file, distributed
from .certificates import ABSTAIN, check_alpha, floor_to
from .certificates.memory import memory_consistency
from .certificates.sequential import SequentialPlan
from .certification_file import CERTIFY_COLUMNS, PREDICT_COLUMNS, CertificationLog, write_atomic, write_json_atomic
from .checkpoints import TrainedRun
from .experts import load_experts
from .errors import check
from .search.base import RowResult, SearchContext, SigmaMethod
from .smoothing import (Smooth, autocast_dtype_of, check_certify_settings, check_noise_settings, count_draws, draws_of,
                        row_generator)


@dataclass
class CertifySettings:
    """The ``certify`` config group: Cohen et al.'s protocol by default (n0 = 100, n = 100,000, alpha = 0.001).

    mode: certify (CERTIFY: certify.tsv with radii) | predict (Cohen's PREDICT: predict.tsv, a class or abstain
    per input, wrong with probability at most alpha; n draws; n0 only for the methods that choose a level
    from draws).
    n0, n, alpha: selection draws, estimation draws and failure probability of each certificate.
    batch_size: noisy images per forward pass (does not change the statistics for a given value).
    split: test | val. skip: certify every skip-th input. max: at most this many inputs (None: all).
    progress: a progress bar with the running certified accuracy. consistency: none | memory (ALGORITHMS.md
    3b: also write certify_memory.tsv). autocast (None | bf16 | fp16), channels_last, compile: speed options
    for the base model only; none changes how the noise is drawn. noise: stream (the default) | split (the
    noise in stripes from their own generators, drawn by several threads: other rows, insta_rs.smoothing);
    noise_threads: threads drawing the noise (None: torch's thread count; changes no row).
    sampling: fixed (Cohen's protocol: n draws for every input) | sequential (SOUND.md 3e: n is the maximum;
    the draws come in stages and an input stops early). For sequential: bound (union | anytime),
    first_stage and stage_factor (the schedule), tolerance (stop when the radius still reachable at n
    exceeds the current one by at most this, pixel units), radii (certify at these radii only), reach_alpha
    (see insta_rs.certificates.sequential.SequentialPlan).
    """

    mode: str = "certify"
    n0: int = 100
    n: int = 100_000
    alpha: float = 0.001
    batch_size: int = 1000
    split: str = "test"
    skip: int = 1
    max: int | None = None
    progress: bool = True
    consistency: str = "none"
    autocast: str | None = None
    channels_last: bool = False
    compile: bool = False
    noise: str = "stream"
    noise_threads: int | None = None
    sampling: str = "fixed"
    bound: str = "union"
    first_stage: int = 1000
    stage_factor: float = 2.0
    tolerance: float = 0.01
    radii: list[float] | None = None
    reach_alpha: float | None = 0.001

    def warnings(self) -> list[str]:
        """Settings that work but are likely a mistake (the entry point prints them)."""
        if self.n0 > self.n:
            return [f"n0={self.n0} is more than n={self.n}: the n0 draws only pick the class that the n draws "
                    f"then bound, so n0 > n spends most draws on the choice (Cohen et al.: n0=100, n=100000)"]
        return []

    def __post_init__(self) -> None:
        check_certify_settings(1.0, self.n0, self.n, self.alpha)
        check(_is_int(self.batch_size) and self.batch_size >= 1, "batch_size", self.batch_size,
              "an integer >= 1")
        check(self.split in ("test", "val"), "split", self.split, "test or val")
        check(_is_int(self.skip) and self.skip >= 1, "skip", self.skip, "an integer >= 1")
        check(self.max is None or (_is_int(self.max) and self.max >= 1), "max", self.max,
              "null or an integer >= 1")
        check(self.consistency in ("none", "memory"), "consistency", self.consistency, "none or memory")
        autocast_dtype_of(self.autocast)
        check_noise_settings(self.noise, self.noise_threads)
        for name in ("progress", "channels_last", "compile"):
            check(isinstance(getattr(self, name), bool), f"{name}", getattr(self, name), "true or false")
        check(self.sampling in ("fixed", "sequential"), "sampling", self.sampling, "fixed or sequential")
        check(self.bound in ("union", "anytime"), "bound", self.bound, "union or anytime")
        check(_is_int(self.first_stage) and 1 <= self.first_stage, "first_stage", self.first_stage,
              "an integer >= 1")
        check(isinstance(self.stage_factor, (int, float)) and self.stage_factor > 1, "stage_factor",
              self.stage_factor, "a number > 1")
        check(isinstance(self.tolerance, (int, float)) and self.tolerance >= 0, "tolerance", self.tolerance,
              "a radius >= 0 (pixel units)")
        check(self.radii is None or (len(self.radii) >= 1 and all(
            isinstance(r, (int, float)) and r > 0 for r in self.radii)), "radii", self.radii,
            "null or a list of radii > 0, e.g. [0.25, 0.5, 0.75, 1.0]")
        check(self.reach_alpha is None or (isinstance(self.reach_alpha, float) and 0 < self.reach_alpha < 1),
              "reach_alpha", self.reach_alpha, "null (optimistic) or a number in (0, 1)")
        check(self.sampling == "sequential" or self.radii is None, "radii", self.radii,
              "null unless sampling=sequential")
        check(self.mode in ("certify", "predict"), "mode", self.mode,
              "certify (CERTIFY: radii) or predict (Cohen's PREDICT: a class or abstain)")
        check(self.mode == "certify" or self.sampling == "fixed", "sampling", self.sampling,
              "fixed with mode=predict (PREDICT takes its n draws at once)")
        check(self.mode == "certify" or self.consistency == "none", "consistency", self.consistency,
              "none with mode=predict (the memory pass needs radii)")

    @property
    def plan(self) -> SequentialPlan | None:
        """The sequential plan (None for fixed sampling)."""
        if self.sampling != "sequential":
            return None
        return SequentialPlan(self.bound, self.first_stage, float(self.stage_factor), float(self.tolerance),
                              None if self.radii is None else tuple(sorted(float(r) for r in self.radii)),
                              self.reach_alpha)

    def resume_identity(self) -> dict:
        """The settings a resumed run must share with the rows already written (the speed options that can
        change a model's last bits are recorded only when on, so runs made before they existed resume)."""
        identity = {"n0": self.n0, "n": self.n, "alpha": self.alpha, "split": self.split, "skip": self.skip,
                    "autocast": self.autocast}
        if self.sampling == "sequential":  # recorded only when on, so fixed-sampling runs resume as before
            identity["sequential"] = {key: getattr(self, key) for key in (
                "bound", "first_stage", "stage_factor", "tolerance", "radii", "reach_alpha")}
        if self.mode == "predict":  # likewise: certify runs made before the mode existed resume
            identity["mode"] = self.mode
        if self.noise != "stream":  # another noise stream is another certification; recorded only when on
            identity["noise"] = self.noise
        return {**identity, **{key: True for key in ("channels_last", "compile") if getattr(self, key)}}


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def select_indices(length: int, skip: int, max_rows: int | None) -> list[int]:
    """Cohen et al.'s selection: every ``skip``-th index from 0, at most ``max_rows`` of them.
    A skip larger than the split is refused: it would silently certify input 0 alone."""
    check(length > 0, "split", "(empty)", "a split with at least one input")  # checked at run time
    check(skip <= length, "skip", skip, f"at most the split's size ({length} inputs)")
    selected = list(range(0, length, skip))
    return selected[:max_rows] if max_rows is not None else selected


class Certifier:
    """Certifies inputs with one sigma-selection method and one smoothed model.

    ``rows(xs, labels, indices)`` returns the TSV rows (dicts keyed by ``columns``) of several inputs,
    each certified with ``row_generator(seed, idx)``; ``time`` is the row's share of the wall seconds
    (the rows of one group share forward passes, so their seconds are split evenly). With
    ``mode="predict"`` the rows are PREDICT's (``PREDICT_COLUMNS``), one input at a time.
    """

    def __init__(self, smooth: Smooth, method: SigmaMethod, n0: int, n: int, alpha: float, seed: int,
                 mode: str = "certify"):
        check_alpha(alpha)
        check_certify_settings(1.0, n0, n, alpha)
        self.smooth, self.method, self.mode = smooth, method, mode
        self.n0, self.n, self.alpha, self.seed = int(n0), int(n), float(alpha), int(seed)
        # fixed sampling keeps Cohen's columns byte for byte; sequential rows say how many draws they used
        self.draws_column = smooth.sequential is not None
        self.columns = CERTIFY_COLUMNS + (("draws",) if self.draws_column else ()) + tuple(method.extra_columns)
        if mode == "predict":
            self.columns = PREDICT_COLUMNS

    @property
    def rows_per_group(self) -> int:
        """How many inputs share forward passes: as many as fit one batch of draws (at least one); with
        sequential sampling, as many as fill one batch at a look."""
        if not self.method.batches_rows or self.mode == "predict":
            return 1
        if self.smooth.sequential is not None:  # a look draws `first` more per running input: fill a batch
            return max(1, self.smooth.batch_size // min(self.smooth.sequential.first, self.n))
        return max(1, self.smooth.batch_size // (self.n0 + self.n))

    def rows(self, xs: Sequence[torch.Tensor], labels: Sequence[int], indices: Sequence[int]) -> list[dict]:
        if self.mode == "predict":
            return [self._predict_row(x, int(label), int(idx)) for x, label, idx in zip(xs, labels, indices)]
        generators = [row_generator(self.seed, int(idx), self.smooth.device) for idx in indices]
        start = time.perf_counter()
        with count_draws():
            results = self.method.certify_many(self.smooth, list(xs), self.n0, self.n, self.alpha, generators)
            draws = [draws_of(generator) for generator in generators]
        seconds = (time.perf_counter() - start) / max(1, len(indices))
        return [self._row(result, int(label), int(idx), seconds, used)
                for result, label, idx, used in zip(results, labels, indices, draws)]

    def _row(self, result: RowResult, label: int, idx: int, seconds: float, draws: int) -> dict:
        correct = int(result.predict == label and result.predict != ABSTAIN)
        extra = {"draws": draws, **result.extra} if self.draws_column else result.extra
        # `time` is every second spent on the input, search included (INTERFACE.md), so tools built for
        # Cohen's files see the whole cost; `search_time` says how much of it was the search
        return {
            "idx": idx, "label": label, "predict": int(result.predict),
            "radius": floor_to(result.radius), "correct": correct,
            "time": round(max(seconds, result.search_time), 4),
            "sigma": result.sigma, "pA_lower": floor_to(result.p_lower), "guarantee": result.guarantee,
            "search_time": round(result.search_time, 4), "search_draws": int(result.search_draws),
            **extra,
        }

    def _predict_row(self, x: torch.Tensor, label: int, idx: int) -> dict:
        """PREDICT (ALGORITHMS.md 1) at the sigma the method chooses; PREDICT's n draws come after the choice's."""
        generator = row_generator(self.seed, idx, self.smooth.device)
        start = time.perf_counter()
        choice = self.method.choose_sigma(self.smooth, x, self.n0, self.alpha, generator)
        search_time = time.perf_counter() - start
        predict = self.smooth.predict(x, choice.sigma, self.n, self.alpha, generator)
        return {"idx": idx, "label": label, "predict": predict, "correct": int(predict == label and predict != ABSTAIN),
                "time": round(time.perf_counter() - start, 4), "sigma": choice.sigma, "guarantee": choice.guarantee,
                "search_time": round(search_time, 4), "search_draws": int(choice.search_draws)}



@dataclass(frozen=True)
class WandbSettings:
    """Where a certification run is logged on W&B: mode (offline | online | disabled), project, group (None:
    the group of the training run that made the checkpoint), and the run's resolved config (so a dashboard
    can filter certify runs by how the model was trained)."""

    mode: str = "offline"
    project: str = "insta-rs"
    group: str | None = None
    config: dict | None = None


@dataclass
class CertificationResult:
    """What ``run`` returns: the rows of ``path`` (the selected inputs, index order) and summary.json."""

    rows: pd.DataFrame
    summary: dict
    table: str
    path: Path


def run(trained: TrainedRun, method: SigmaMethod, method_spec: dict, settings: CertifySettings, seed: int,
        run_dir: str | Path, make_trainer: Callable[[list], object],
        wandb: WandbSettings | None = None) -> CertificationResult | None:
    """Certify ``trained``'s ``settings.split`` with ``method`` into ``run_dir/certify.tsv`` and write the
    reports (summary.json, table.md, certified_accuracy.png, sigma_hist.png). ``method_spec`` is the method's
    config, recorded for resuming; ``make_trainer(callbacks)`` builds the Lightning Trainer (any number of
    ranks; it must pass ``use_distributed_sampler=False``). Rerunning in the same ``run_dir`` resumes after
    the last complete row. Returns the result on the process that holds the merged file, None on the others.
    With ``settings.mode == "predict"``: PREDICT rows into ``run_dir/predict.tsv``, then summary.json and table.md
    (``predict_reports``; no figures). Both log a W&B run when ``wandb`` says so (``log_to_wandb``)."""
    run_dir = Path(run_dir)
    tsv_path = run_dir / f"{settings.mode}.tsv"  # certify.tsv | predict.tsv
    writer = distributed.RowWriter(tsv_path)
    trainer = make_trainer([writer])
    device = trainer.strategy.root_device
    model, experts = trained.model, {}
    if method.experts:
        model, experts = load_experts(method.experts, trained)
    smooth = Smooth(model, trained.num_classes, batch_size=settings.batch_size, device=device,
                    autocast_dtype=settings.autocast, channels_last=settings.channels_last,
                    compile=settings.compile, noise=settings.noise, noise_threads=settings.noise_threads)
    smooth.sequential = settings.plan
    certifier = Certifier(smooth, method, settings.n0, settings.n, settings.alpha, seed, mode=settings.mode)
    method.prepare(SearchContext(source=trained.source, num_classes=trained.num_classes, device=device,
                                 trained_sigma=trained.trained_sigma, ckpt_path=str(trained.path),
                                 experts_sha256=experts or None, sequential=settings.plan is not None))
    if experts:
        for sigma in getattr(method, "levels", ()):
            model.expert(sigma)  # a level without an expert: one line before any row is written
    dataset = trained.source.split(settings.split)
    selected = select_indices(len(dataset), settings.skip, settings.max)
    identity = {"checkpoint_sha256": trained.sha256, "dataset": trained.source_spec, "sigma_search": method_spec,
                "seed": seed, **settings.resume_identity(), **method.resume_identity(),
                **({"experts_sha256": experts} if experts else {})}
    started = time.time()
    if not distributed.certify_sharded(certifier, dataset, selected, tsv_path, identity, trainer, writer,
                                       progress=settings.progress):
        return None
    if settings.mode == "predict":
        result = predict_reports(run_dir, tsv_path, selected, method.name, method_spec, time.time() - started,
                                 settings)
        log_to_wandb(wandb, trained, method.name, method_spec, settings, result)
        return result
    rows = _selected_rows(analysis.read_certification(tsv_path), selected)
    frames, extra = {method.name: rows}, {"draws_fixed": settings.n0 + settings.n}
    if settings.consistency == "memory":
        frames["memory"], extra["memory_changed_rows"] = memory_pass(run_dir, rows, dataset, identity)
    summary, table = write_reports(run_dir, frames, trained.source.info.name, method_spec, time.time() - started,
                                   extra, n=settings.n, alpha=settings.alpha)
    _announce(table, extra, len(selected), run_dir)
    result = CertificationResult(rows, summary, table, tsv_path)
    log_to_wandb(wandb, trained, method.name, method_spec, settings, result)
    return result


def log_to_wandb(wandb: WandbSettings | None, trained: TrainedRun, method_name: str, method_spec: dict,
                 settings: CertifySettings, result: CertificationResult) -> None:
    """The certification (or PREDICT) run on W&B (``tracking.log_certification_to_wandb``), named after the
    trained run and the method, in the trained run's group unless ``wandb.group`` names another; its config
    holds the sigma_search actually used and the trained run's data set, model and training settings."""
    if wandb is None or wandb.mode == "disabled":
        return
    from .tracking import certification_run_name, log_certification_to_wandb, trained_run_identity

    trained_name, trained_group = trained_run_identity(trained.config, trained.run_dir)
    config = {**(wandb.config or {}), "sigma_search": method_spec,
              "trained": {"name": trained_name, **{key: trained.config.get(key) for key in ("dataset", "model", "train")}}}
    rows = result.rows
    curve = analysis.certified_accuracy_curve(rows) if settings.mode == "certify" else None
    log_certification_to_wandb(result.path.parent, result.summary, curve, rows["sigma"].astype(float).tolist(), config,
                               mode=wandb.mode, project=wandb.project, group=wandb.group or trained_group,
                               name=certification_run_name(trained_name, method_name, method_spec, settings.n,
                                                           settings.alpha, settings.mode),
                               job_type=settings.mode)


def predict_reports(run_dir: Path, tsv_path: Path, selected: Sequence[int], method_name: str, sigma_search: dict,
                    wall_seconds: float, settings: CertifySettings) -> CertificationResult:
    """summary.json and table.md of a PREDICT run: accuracy and abstain rate per guarantee label
    (``analysis.summarize_predictions``), rows, seconds per input and draws (PREDICT's n plus the search's)."""
    rows = _selected_rows(analysis.read_predictions(tsv_path), selected)
    by_guarantee = analysis.summarize_predictions_by_guarantee(rows)
    single = next(iter(by_guarantee.values())) if len(by_guarantee) == 1 else None
    summary = {
        "mode": "predict",
        **{key: (single[key] if single else None) for key in ("accuracy", "abstain_rate", "sigma_quantiles", "intervals")},
        "rows": int(len(rows)),
        "guarantee": {label: int(s["rows"]) for label, s in by_guarantee.items()},
        "sigma_search": sigma_search,
        "n": settings.n,
        "alpha": settings.alpha,
        "seconds": round(float(rows["time"].sum()), 3),
        "seconds_per_input": round(float(rows["time"].mean()), 4) if len(rows) else None,
        "wall_seconds_this_run": round(wall_seconds, 3),
        "draws_mean": round(float((settings.n + rows["search_draws"]).mean()), 1) if len(rows) else None,
        "by_guarantee": by_guarantee,
    }
    table = analysis.prediction_table({method_name: by_guarantee})
    write_json_atomic(run_dir / "summary.json", summary)
    write_atomic(run_dir / "table.md", table)
    print(table)
    print(f"wrote {tsv_path.name}, summary.json, table.md in {run_dir}")
    return CertificationResult(rows, summary, table, tsv_path)


def _selected_rows(rows: pd.DataFrame, selected: Sequence[int]) -> pd.DataFrame:
    return rows[rows["idx"].isin(list(selected))].sort_values("idx").reset_index(drop=True)


def _announce(table: str, extra: dict, selected: int, run_dir: Path) -> None:
    print(table)
    if "memory_changed_rows" in extra:
        print(f"memory pass: changed {extra['memory_changed_rows']} of {selected} rows (certify_memory.tsv)")
    print(f"wrote certify.tsv, summary.json, table.md, certified_accuracy.png, sigma_hist.png in {run_dir}")


def memory_pass(run_dir: Path, rows: pd.DataFrame, dataset, identity: dict) -> tuple[pd.DataFrame, int]:
    """ALGORITHMS.md 3b over the finished rows in index order: ``certify_memory.tsv``, guarantee ``memory``.
    Returns its rows and how many of them the pass changed."""
    predicts, radii, changed = memory_consistency(flat_inputs(dataset, rows["idx"].tolist()),
                                                  rows["predict"].to_numpy(), rows["radius"].to_numpy())
    out = run_dir / "certify_memory.tsv"
    out.unlink(missing_ok=True)
    out.with_name(out.stem + ".settings.json").unlink(missing_ok=True)
    memory = rows.copy()
    memory["predict"], memory["radius"], memory["guarantee"] = predicts.astype(int), radii, "memory"
    memory["correct"] = ((memory["predict"] == memory["label"]) & (memory["predict"] >= 0)).astype(int)
    with CertificationLog(out, {**identity, "consistency": "memory"}, list(rows.columns)) as log:
        for record in memory.to_dict("records"):
            log.append({key: (int(value) if isinstance(value, (np.integer, bool)) else value)
                        for key, value in record.items()})
    return memory, int(changed.sum())


def summary_of(rows, radii: Sequence[float], sigma_search: dict, wall_seconds: float, extra: dict | None = None) -> dict:
    """summary.json (INTERFACE.md). With one guarantee label the headline numbers are that label's; with
    several they are null and ``by_guarantee`` holds each label's numbers, so nothing is mixed silently."""
    extra = dict(extra or {})
    fixed = extra.pop("draws_fixed", None)
    by_guarantee = analysis.summarize_by_guarantee(rows, radii)
    single = next(iter(by_guarantee.values())) if len(by_guarantee) == 1 else None
    # every draw a row used, search included: the `draws` column (sequential), else n0 + n + search draws
    draws = rows["draws"] if "draws" in rows else (None if fixed is None else fixed + rows["search_draws"])
    headline = {key: (single[key] if single else None)
                for key in ("acr", "certified_accuracy", "clean_accuracy", "abstain_rate", "sigma_quantiles", "intervals")}
    return {
        **headline,
        "rows": int(len(rows)),
        "guarantee": {label: int(s["rows"]) for label, s in by_guarantee.items()},
        "sigma_search": sigma_search,
        "seconds": round(float(rows["time"].sum()), 3),
        "seconds_per_input": round(float(rows["time"].mean()), 4) if len(rows) else None,
        "wall_seconds_this_run": round(wall_seconds, 3),
        "draws_mean": None if draws is None or not len(rows) else round(float(draws.mean()), 1),
        "draws_median": None if draws is None or not len(rows) else float(draws.median()),
        "by_guarantee": by_guarantee,
        **extra,
    }


def write_reports(run_dir: Path, frames: dict[str, pd.DataFrame], dataset_name: str, sigma_search: dict,
                  wall_seconds: float, extra: dict | None = None, n: int | None = None,
                  alpha: float | None = None) -> tuple[dict, str]:
    """summary.json, table.md, certified_accuracy.png (one curve per file and guarantee) and sigma_hist.png.
    ``frames`` maps a label (the method's name for the main file, first; ``memory`` for the consistency
    pass) to its rows; the summary's headline is the main file's. ``n``, ``alpha``: shown in the legend.
    Returns the summary and the table."""
    radii = analysis.radius_grid(dataset_name)
    (main_label, main), *_ = frames.items()
    summary = summary_of(main, radii, sigma_search, wall_seconds, extra)
    tables = {label: analysis.summarize_by_guarantee(rows, radii) for label, rows in frames.items()}
    if len(frames) > 1:
        names = {main_label: "certify.tsv", "memory": "certify_memory.tsv"}
        summary["files"] = {label: {"path": names.get(label, label), "by_guarantee": tables[label]}
                            for label in frames}
    table = analysis.markdown_table(tables, radii)
    write_json_atomic(run_dir / "summary.json", summary)
    write_atomic(run_dir / "table.md", table)
    curves, guarantees, bands = {}, {}, {}
    for label, rows in frames.items():
        for guarantee in sorted(rows["guarantee"].astype(str).unique()):
            legend = analysis.curve_label(None, label, guarantee, sigma=analysis.single_sigma(rows),
                                          levels=sigma_search.get("levels"), n=n, alpha=alpha)
            curves[legend] = analysis.certified_accuracy_curve(rows[rows["guarantee"] == guarantee])
            guarantees[legend] = guarantee
            bands[legend] = analysis.curve_band(curves[legend][1], int((rows["guarantee"] == guarantee).sum()))
    analysis.plot_certified_accuracy(curves, run_dir / "certified_accuracy.png", subject=dataset_name,
                                     guarantees=guarantees, bands=bands)
    analysis.plot_sigma_histogram(main["sigma"].astype(float).tolist(), run_dir / "sigma_hist.png",
                                  title=f"{dataset_name}: sigma per input")
    return summary, table


def flat_inputs(dataset, indices: Sequence[int]) -> np.ndarray:
    """The inputs of ``indices`` as an (N, D) float64 array in [0, 1] pixel units (for distance-based passes)."""
    return np.stack([dataset[int(i)][0].reshape(-1).double().numpy() for i in indices]) if len(indices) else np.zeros((0, 0))
