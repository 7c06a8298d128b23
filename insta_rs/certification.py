"""Certifying a test split row by row: the loop behind ``certify.py`` (ALGORITHMS.md sections 1-3, 6).

``Certifier`` turns one test input into one TSV row: the sigma-selection method certifies it with the
row's own generator (``row_generator(seed, idx)``), so a row depends on (seed, idx, settings) alone and
a resumed or sharded run writes the same rows as an uninterrupted one. ``certify_split`` appends each
row to a ``CertificationLog`` (flushed per row; resumable) and ``write_reports`` turns the finished TSV
into ``summary.json``, ``table.md`` and the plots, never mixing guarantees without their label.

Several inputs share forward passes when a method supports it (``SigmaMethod.certify_many``; the
fixed-sigma method does): their draws still come from their own generators, so the rows are the
same as when certified one at a time.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch

from . import analysis
from .certificates import ABSTAIN, check_alpha, floor_to
from .errors import check
from .search.base import RowResult, SigmaMethod
from .smoothing import Smooth, check_certify_settings, row_generator
from .tracking import CERTIFY_COLUMNS, CertificationLog, write_json_atomic, write_text_atomic


def check_selection(split: str, skip, max_rows) -> None:
    """The ``certify`` group's selection settings, each a one-line ConfigError when wrong."""
    check(split in ("test", "val"), "certify.split", split, "test or val")
    check(isinstance(skip, int) and not isinstance(skip, bool) and skip >= 1, "certify.skip", skip, "an integer >= 1")
    check(max_rows is None or (isinstance(max_rows, int) and not isinstance(max_rows, bool) and max_rows >= 1),
          "certify.max", max_rows, "null or an integer >= 1")


def select_indices(length: int, skip: int, max_rows: int | None) -> list[int]:
    """Cohen et al.'s selection: every ``skip``-th index from 0, at most ``max_rows`` of them.
    A skip larger than the split is refused: it would silently certify input 0 alone."""
    check(length > 0, "certify.split", "(empty)", "a split with at least one input")
    check(skip <= length, "certify.skip", skip, f"at most the split's size ({length} inputs)")
    selected = list(range(0, length, skip))
    return selected[:max_rows] if max_rows is not None else selected


class Certifier:
    """Certifies inputs with one sigma-selection method and one smoothed model.

    ``rows(xs, labels, indices)`` returns the TSV rows (dicts keyed by ``columns``) of several inputs,
    each certified with ``row_generator(seed, idx)``; ``time`` is the row's share of the wall seconds
    (the rows of one group share forward passes, so their seconds are split evenly).
    """

    def __init__(self, smooth: Smooth, method: SigmaMethod, n0: int, n: int, alpha: float, seed: int):
        check_alpha(alpha)
        check_certify_settings(1.0, n0, n, alpha)
        self.smooth, self.method = smooth, method
        self.n0, self.n, self.alpha, self.seed = int(n0), int(n), float(alpha), int(seed)
        self.columns = CERTIFY_COLUMNS + tuple(method.extra_columns)

    @property
    def rows_per_group(self) -> int:
        """How many inputs share forward passes: as many as fit one batch of draws (at least one)."""
        if not self.method.batches_rows:
            return 1
        return max(1, self.smooth.batch_size // (self.n0 + self.n))

    def rows(self, xs: Sequence[torch.Tensor], labels: Sequence[int], indices: Sequence[int]) -> list[dict]:
        generators = [row_generator(self.seed, int(idx), self.smooth.device) for idx in indices]
        start = time.perf_counter()
        results = self.method.certify_many(self.smooth, list(xs), self.n0, self.n, self.alpha, generators)
        seconds = (time.perf_counter() - start) / max(1, len(indices))
        return [self._row(result, int(label), int(idx), seconds) for result, label, idx in zip(results, labels, indices)]

    def _row(self, result: RowResult, label: int, idx: int, seconds: float) -> dict:
        correct = int(result.predict == label and result.predict != ABSTAIN)
        # the search's seconds are reported in their own column; `time` is the certification's share
        return {
            "idx": idx, "label": label, "predict": int(result.predict),
            "radius": floor_to(result.radius), "correct": correct,
            "time": round(max(0.0, seconds - result.search_time), 4),
            "sigma": result.sigma, "pA_lower": floor_to(result.p_lower), "guarantee": result.guarantee,
            "search_time": round(result.search_time, 4), "search_draws": int(result.search_draws),
            **result.extra,
        }


def certify_split(certifier: Certifier, dataset, indices: Iterable[int], log: CertificationLog,
                  on_row: Callable[[dict], None] | None = None) -> int:
    """Certify ``dataset[idx]`` for every idx not yet in ``log``, appending (and flushing) each group of
    rows as soon as it is done. Returns how many rows this call wrote."""
    done = set(log.done)
    todo = [int(i) for i in indices if int(i) not in done]
    group = certifier.rows_per_group
    written = 0
    for start in range(0, len(todo), group):
        chunk = todo[start:start + group]
        items = [dataset[i] for i in chunk]
        rows = certifier.rows([x for x, _, _ in items], [int(y) for _, y, _ in items], chunk)
        for row in rows:
            log.append(row)
            written += 1
            if on_row is not None:
                on_row(row)
    return written


def summary_of(rows, radii: Sequence[float], sigma_search: dict, wall_seconds: float, extra: dict | None = None) -> dict:
    """summary.json (INTERFACE.md). With one guarantee label the headline numbers are that label's; with
    several they are null and ``by_guarantee`` holds each label's numbers, so nothing is mixed silently."""
    by_guarantee = analysis.summarize_by_guarantee(rows, radii)
    single = next(iter(by_guarantee.values())) if len(by_guarantee) == 1 else None
    headline = {key: (single[key] if single else None)
                for key in ("acr", "certified_accuracy", "clean_accuracy", "abstain_rate", "sigma_quantiles")}
    return {
        **headline,
        "rows": int(len(rows)),
        "guarantee": {label: int(s["rows"]) for label, s in by_guarantee.items()},
        "sigma_search": sigma_search,
        "seconds": round(float(rows["time"].sum() + rows["search_time"].sum()), 3),
        "seconds_per_input": round(float((rows["time"] + rows["search_time"]).mean()), 4) if len(rows) else None,
        "wall_seconds_this_run": round(wall_seconds, 3),
        "by_guarantee": by_guarantee,
        **(extra or {}),
    }


def write_reports(run_dir: Path, tsv_paths: dict[str, Path], selected: Sequence[int], dataset_name: str,
                  method_name: str, sigma_search: dict, wall_seconds: float, extra: dict | None = None
                  ) -> tuple[dict, str, list[float]]:
    """summary.json, table.md, certified_accuracy.png (one curve per file and guarantee) and sigma_hist.png
    from the finished TSVs. ``tsv_paths`` maps a label (``method_name`` for the main file, ``memory`` for
    the consistency pass) to its TSV; the summary's headline is the main file's. Returns the summary,
    the markdown table and the per-input sigmas."""
    radii = analysis.radius_grid(dataset_name)
    frames = {}
    for label, path in tsv_paths.items():
        rows = analysis.read_certification(path)
        frames[label] = rows[rows["idx"].isin(list(selected))]
    main = frames[method_name]
    summary = summary_of(main, radii, sigma_search, wall_seconds, extra)
    tables = {label: analysis.summarize_by_guarantee(rows, radii) for label, rows in frames.items()}
    if len(frames) > 1:
        summary["files"] = {label: {"path": str(path.name), "by_guarantee": tables[label]}
                            for label, path in tsv_paths.items()}
    table = analysis.markdown_table(tables, radii)
    write_json_atomic(run_dir / "summary.json", summary)
    write_text_atomic(run_dir / "table.md", table)
    curves = {}
    for label, rows in frames.items():
        for guarantee in sorted(rows["guarantee"].astype(str).unique()):
            curves[f"{label} ({guarantee})"] = analysis.certified_accuracy_curve(rows[rows["guarantee"] == guarantee])
    analysis.plot_certified_accuracy(curves, run_dir / "certified_accuracy.png", title=f"{dataset_name}: certified accuracy")
    sigmas = main["sigma"].astype(float).tolist()
    analysis.plot_sigma_histogram(sigmas, run_dir / "sigma_hist.png", title=f"{dataset_name}: sigma per input")
    return summary, table, sigmas


def flat_inputs(dataset, indices: Sequence[int]) -> np.ndarray:
    """The inputs of ``indices`` as an (N, D) float64 array in [0, 1] pixel units (for distance-based passes)."""
    return np.stack([dataset[int(i)][0].reshape(-1).double().numpy() for i in indices]) if len(indices) else np.zeros((0, 0))
