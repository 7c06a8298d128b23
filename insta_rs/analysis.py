"""Tables, ACR and curves for certification files (ALGORITHMS.md sections 5 and 6).

A certification file is a TSV, header first, one row per input (ALGORITHMS.md section 6):
``idx label predict radius correct time`` then, in files we write, ``sigma pA_lower guarantee
search_time search_draws`` (and possibly more). Columns are found by header name. Cohen et al.'s
released files have only the first six; their ``time`` holds seconds or ``H:MM:SS.ffffff``, and
their rows are fixed-sigma certificates, hence guarantee ``sound``.

Metrics (ALGORITHMS.md section 5), over the N rows of a file:
- certified accuracy at r = #{i : correct_i = 1 and radius_i >= r} / N  (an abstention is wrong);
- ACR = (1/N) * sum_i radius_i * correct_i.
Summaries never pool rows of different guarantee labels (ALGORITHMS.md section 3): use
``summarize_by_guarantee``; ``summarize`` on a mixed frame says ``guarantee: "mixed"``.

A prediction file (PREDICT, ALGORITHMS.md 1: ``certify.mode=predict``'s predict.tsv, or Cohen et al.'s
``predict.py`` output) has ``idx label predict correct time`` and no radius: ``read_predictions``,
``summarize_predictions`` (accuracy, abstain rate) and ``prediction_table``.
"""

from __future__ import annotations

import io
import math
import os
import re
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from . import intervals
from .certification_file import write_atomic
from .errors import ConfigError, DataError

CIFAR10_RADII = tuple(0.25 * i for i in range(10))  # 0, 0.25, ..., 2.25
IMAGENET_RADII = tuple(0.5 * i for i in range(8))  # 0, 0.5, ..., 3.5

ABSTAIN = -1
REQUIRED_COLUMNS = ("idx", "label", "predict", "radius", "correct")
PREDICTION_COLUMNS = ("idx", "label", "predict", "correct")
# optional column -> (kind, default when the column is absent)
OPTIONAL_COLUMNS = {
    "time": ("time", math.nan),
    "sigma": ("float", math.nan),
    "pA_lower": ("float", math.nan),
    "guarantee": ("label", "sound"),
    "search_time": ("float", 0.0),
    "search_draws": ("int", 0),
}
_KINDS = {"idx": "int", "label": "int", "predict": "int", "radius": "float", "correct": "int"}
SIGMA_QUANTILES = {"q05": 0.05, "q25": 0.25, "q50": 0.50, "q75": 0.75, "q95": 0.95}

_CLOCK = re.compile(r"^(?:(?P<days>\d+) days?, )?(?P<h>\d+):(?P<m>\d{1,2}):(?P<s>\d{1,2}(?:\.\d*)?)$")


def radius_grid(dataset_name: str | None) -> tuple[float, ...]:
    """The standard radius grid (ALGORITHMS.md section 5): ImageNet's for a name starting with
    ``imagenet`` (any case), CIFAR-10's (0, 0.25, ..., 2.25) for anything else, None included."""
    if dataset_name is not None and str(dataset_name).lower().startswith("imagenet"):
        return IMAGENET_RADII
    return CIFAR10_RADII


def grid_up_to_reach(grid: Sequence[float], frames: Iterable[pd.DataFrame]) -> tuple[float, ...]:
    """A standard radius grid cut where the data stop: its radii up to the largest radius any correct row of
    ``frames`` reaches, rounded up to the grid's step (so the last column is the first at which every row's
    certified accuracy is 0, unless the grid ends first). Digits runs certified at sigma 0.25 reach about 1,
    so the CIFAR-10 grid stops at 1.0 instead of running to 2.25. At least the grid's first two radii."""
    grid = tuple(float(r) for r in grid)
    if len(grid) < 2:
        return grid
    step = grid[1] - grid[0]
    top = 0.0
    for df in frames:
        radius = df.loc[df["correct"] == 1, "radius"].to_numpy(dtype=float)
        radius = radius[np.isfinite(radius)]
        top = max(top, float(radius.max()) if radius.size else 0.0)
    end = grid[0] + math.ceil((top - grid[0]) / step - 1e-9) * step
    kept = tuple(r for r in grid if r <= end + 1e-9)
    return kept if len(kept) >= 2 else grid[:2]


RUN_FILES = ("certify.tsv", "predict.tsv")  # what certify.py writes in a run folder (certification, PREDICT)
NOT_RUN_FILES = (".json", ".png", ".jpg", ".jpeg", ".pdf", ".svg", ".yaml", ".yml", ".md", ".csv", ".ckpt", ".pt",
                 ".pth", ".log", ".npz", ".npy", ".gz", ".zip", ".tar", ".wandb")


def _natural_key(path: Path):
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(path))]


def run_files(paths: Sequence[str | Path]) -> list[Path]:
    """The certification and prediction files that ``paths`` name, for ``analyze`` and ``compare``: a run folder
    stands for its certify.tsv or predict.tsv; a folder without one for every such file below it (a sweep), in
    natural order (``2`` before ``10``); a file for itself (ours, or Cohen et al.'s, which have no extension).
    Command-line mistakes are ConfigErrors (exit 2), one line each: a path that does not exist, a folder with no
    run below it (a training run: certify it first), a file that is plainly not a table (.json, .png, ...)."""
    found = []
    for given in paths:
        path = Path(given)
        if path.is_dir():
            own = [path / name for name in RUN_FILES if (path / name).is_file()]
            below = own or sorted((p for name in RUN_FILES for p in path.rglob(name)), key=_natural_key)
            if not below:
                hint = (f": it is a training run, certify it first (python certify.py "
                        f"ckpt_path={path}/checkpoints/last.ckpt)" if (path / "checkpoints").is_dir() else
                        ": expected a certification run directory, a folder of them, or a TSV file")
                raise ConfigError(f"{path}: no {' or '.join(RUN_FILES)} in it or below it{hint}")
            found += below
        elif path.is_file():
            if path.suffix.lower() in NOT_RUN_FILES:
                raise ConfigError(f"{path}: a {path.suffix} file is not a certification or prediction table: expected "
                                  f"a run folder, certify.tsv, predict.tsv or a Cohen et al. file")
            found.append(path)
        else:
            raise ConfigError(f"{path}: no such file or directory: expected a certification run directory, a folder "
                              f"of them, or a TSV file")
    return found


def parse_time(value) -> float:
    """Seconds from a number, a numeric string, or a clock string ``H:MM:SS[.ffffff]`` (Python's
    ``str(timedelta)``, as in Cohen et al.'s files, including the ``"N day(s), H:MM:SS"`` form).
    A negative, non-finite or unparseable value raises DataError naming it."""
    seconds = None
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        try:
            seconds = float(text)
        except ValueError:
            match = _CLOCK.match(text)
            if match is not None and int(match["m"]) < 60 and float(match["s"]) < 60:
                seconds = (int(match["days"] or 0) * 86400 + int(match["h"]) * 3600 + int(match["m"]) * 60
                           + float(match["s"]))
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        raise DataError(f"time value {value!r} is not a duration: expected seconds (e.g. 15.1) or H:MM:SS.ffffff "
                        f"(e.g. 0:00:15.123456)")
    return seconds


def _convert(text: str, kind: str):
    if kind == "int":
        try:
            return int(text)
        except ValueError:
            number = float(text)  # "3.0" is accepted; "abc" raises ValueError
            if not number.is_integer():
                raise ValueError(text) from None
            return int(number)
    if kind == "float":
        return float(text)
    if kind == "time":
        return parse_time(text)
    if kind == "label":
        if not text.strip():
            raise ValueError(text)
        return text.strip()
    raise AssertionError(kind)


_EXPECTED = {"int": "an integer", "float": "a number", "time": "seconds or H:MM:SS.ffffff",
             "label": "a non-empty label such as sound, instance or memory"}


def read_certification(path: str | Path) -> pd.DataFrame:
    """Read a certification TSV (ALGORITHMS.md section 6) into a DataFrame, columns found by header name.

    Required: idx, label, predict, radius, correct. Optional, with the default used when absent:
    time (NaN), sigma (NaN), pA_lower (NaN), guarantee ("sound": Cohen et al.'s fixed-sigma
    certificates are sound), search_time (0.0), search_draws (0). ``time`` becomes float seconds.
    Extra columns are kept (numeric where every value is). A trailing line with fewer fields than
    the header, or one that lacks its newline and does not parse, is a row a killed run was writing
    and is ignored; any other malformed row raises DataError (one line naming file, line and column).
    """
    return _read_rows(Path(path), REQUIRED_COLUMNS, "a certification file")


def read_predictions(path: str | Path) -> pd.DataFrame:
    """Read a prediction TSV (PREDICT rows: idx, label, predict, correct required; no radius) as
    ``read_certification`` reads a certification file, with the same optional columns and defaults."""
    return _read_rows(Path(path), PREDICTION_COLUMNS, "a prediction file")


def is_prediction_file(path: str | Path) -> bool:
    """Whether the file's header has PREDICT's columns and no ``radius`` (False when it cannot be read: the
    reader then says why)."""
    try:
        with open(path, encoding="utf-8") as f:
            header = f.readline().rstrip("\r\n").split("\t")
    except (OSError, UnicodeDecodeError):
        return False
    return "radius" not in header and all(column in header for column in PREDICTION_COLUMNS)


def _read_rows(path: Path, required: Sequence[str], what: str) -> pd.DataFrame:
    lines, complete_last = _certification_lines(path)
    header = _certification_header(path, lines, required, what)
    kinds = {**_KINDS, **{name: kind for name, (kind, _) in OPTIONAL_COLUMNS.items()}}
    records = _certification_records(path, header, lines[1:], kinds, complete_last)
    df = _certification_frame(header, records, kinds)
    bad = df.index[~df["correct"].isin([0, 1])]
    if len(bad):
        raise DataError(f"{path}: column 'correct' value {df['correct'][bad[0]]!r} in row {bad[0] + 1} "
                        f"is not 0 or 1")
    return df


def _certification_lines(path: Path) -> tuple[list[str], bool]:
    """The file's lines without line endings, and whether its text ended with a newline."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or type(error).__name__
        raise DataError(f"{path}: cannot read certification file ({reason})") from None
    lines = text.split("\n")
    complete_last = lines[-1] == ""  # the text ended with a newline
    if complete_last:
        lines.pop()
    return [line.rstrip("\r") for line in lines], complete_last


def _certification_header(path: Path, lines: list[str], required: Sequence[str] = REQUIRED_COLUMNS,
                          what: str = "a certification file") -> list[str]:
    """The header's column names; DataError when it is empty, repeats a name or lacks a required column."""
    if not lines or not lines[0].strip():
        raise DataError(f"{path}: empty {what.split(' ', 1)[1]}: expected a header line with columns "
                        f"{', '.join(required)}, time")
    header = lines[0].split("\t")
    if len(set(header)) != len(header):
        duplicated = sorted({c for c in header if header.count(c) > 1})
        raise DataError(f"{path}: column {duplicated[0]!r} appears twice in the header")
    missing = [c for c in required if c not in header]
    if missing:
        raise DataError(f"{path}: missing column {missing[0]!r}: {what} needs tab-separated columns "
                        f"{', '.join(required)} (found {', '.join(header)})")
    return header


def _certification_records(path: Path, header: list[str], body: list[str], kinds: dict[str, str],
                           complete_last: bool) -> dict[str, list]:
    """{column: its values, row by row} of the body lines (typed columns converted, others kept as text).
    Blank lines are skipped; a last row cut short by a killed run, or unparseable and without its
    newline, is dropped; any other malformed row raises DataError."""
    typed = [c for c in header if c in kinds]
    records: dict[str, list] = {c: [] for c in header}
    for number, line in enumerate(body, start=2):
        last = number == len(body) + 1
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != len(header):
            if last and len(fields) < len(header):
                break  # a row cut short by a killed run
            raise DataError(f"{path}: line {number} has {len(fields)} fields, the header has {len(header)}")
        try:
            values = _typed_fields(path, number, header, fields, typed, kinds)
        except DataError:
            if last and not complete_last:
                break  # the last row lacks its newline and does not parse: cut mid-write
            raise
        for column, field in zip(header, fields):
            records[column].append(values.get(column, field))
    return records


def _typed_fields(path: Path, number: int, header: list[str], fields: list[str], typed: list[str],
                  kinds: dict[str, str]) -> dict:
    """{column: converted value} for the ``typed`` columns of one row (line ``number``)."""
    values = {}
    for column in typed:
        field = fields[header.index(column)]
        try:
            values[column] = _convert(field, kinds[column])
        except (ValueError, DataError):
            raise DataError(f"{path}: line {number}: column {column!r} value {field!r} is not "
                            f"{_EXPECTED[kinds[column]]}") from None
    return values


def _certification_frame(header: list[str], records: dict[str, list], kinds: dict[str, str]) -> pd.DataFrame:
    """The records as a DataFrame with each kind's dtype (extra columns numeric where every value is)
    and the absent optional columns filled with their defaults."""
    df = pd.DataFrame({c: records[c] for c in header})
    for column in header:
        kind = kinds.get(column)
        if kind == "int":
            df[column] = df[column].astype("int64")
        elif kind in ("float", "time"):
            df[column] = df[column].astype("float64")
        elif kind is None:
            try:
                df[column] = pd.to_numeric(df[column])
            except (ValueError, TypeError):
                pass
    for column, (kind, default) in OPTIONAL_COLUMNS.items():
        if column not in df.columns:
            dtype = {"int": "int64", "float": "float64", "time": "float64"}.get(kind, object)
            df[column] = pd.Series([default] * len(df), index=df.index, dtype=dtype)
    return df


def certified_accuracy(radius, correct, radii: Iterable[float]) -> dict[float, float]:
    """{r: #{i : correct_i = 1 and radius_i >= r} / N} for each r (ALGORITHMS.md section 5).
    Abstentions (correct 0) count as wrong. NaN for every r when there are no rows."""
    radius = np.asarray(radius, dtype=float)
    correct = np.asarray(correct) == 1
    n = radius.size
    return {float(r): (float(np.count_nonzero(correct & (radius >= r)) / n) if n else math.nan) for r in radii}


def average_certified_radius(radius, correct) -> float:
    """ACR = (1/N) * sum_i radius_i * correct_i (ALGORITHMS.md section 5); NaN with no rows."""
    radius = np.asarray(radius, dtype=float)
    correct = (np.asarray(correct) == 1).astype(float)
    return float(np.mean(radius * correct)) if radius.size else math.nan


def _none_if_nan(value):
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


def summarize(df: pd.DataFrame, radii: Sequence[float], confidence: float = intervals.CONFIDENCE) -> dict:
    """One run's numbers (ALGORITHMS.md section 5), as plain JSON-ready Python values:
    rows; acr; certified_accuracy {r: fraction}; clean_accuracy (fraction with correct = 1, i.e. the
    certified accuracy at r = 0 with abstentions wrong); abstain_rate (fraction with predict = -1);
    seconds_per_input (mean of time over rows with a time; time includes the search); sigma_quantiles
    ({q05, q25, q50, q75, q95} over rows with a finite sigma, else None); guarantee (the rows' label,
    or "mixed" when they carry several: prefer ``summarize_by_guarantee``); limited_by (``limited_by_counts``);
    intervals (``number_intervals``: the ``confidence`` interval over the inputs of every fraction and of ACR).
    With no rows every fraction and interval is None."""
    n = int(len(df))
    labels = sorted(set(df["guarantee"].astype(str))) if "guarantee" in df.columns else ["sound"]
    if n == 0:
        return {"rows": 0, "guarantee": labels[0] if len(labels) == 1 else ("mixed" if labels else None),
                "acr": None, "certified_accuracy": {float(r): None for r in radii}, "clean_accuracy": None,
                "abstain_rate": None, "seconds_per_input": None, "sigma_quantiles": None, "limited_by": None,
                "intervals": number_intervals(df, radii, confidence)}
    radius = df["radius"].to_numpy(dtype=float)
    correct = df["correct"].to_numpy()
    seconds = df["time"].to_numpy(dtype=float) if "time" in df.columns else np.full(n, math.nan)
    seconds = seconds[np.isfinite(seconds)]  # `time` is every second of the input, search included
    sigma = df["sigma"].to_numpy(dtype=float) if "sigma" in df.columns else np.array([])
    sigma = sigma[np.isfinite(sigma)]
    return {
        "rows": n,
        "guarantee": labels[0] if len(labels) == 1 else "mixed",
        "acr": average_certified_radius(radius, correct),
        "certified_accuracy": certified_accuracy(radius, correct, radii),
        "clean_accuracy": float(np.mean(correct == 1)),
        "abstain_rate": float(np.mean(df["predict"].to_numpy() == ABSTAIN)),
        "seconds_per_input": float(np.mean(seconds)) if seconds.size else None,
        "sigma_quantiles": ({key: float(np.quantile(sigma, q)) for key, q in SIGMA_QUANTILES.items()}
                            if sigma.size else None),
        "limited_by": limited_by_counts(df),
        "intervals": number_intervals(df, radii, confidence),
    }


def _pair(interval) -> list[float]:
    return [float(interval[0]), float(interval[1])]


def number_intervals(df: pd.DataFrame, radii: Sequence[float], confidence: float = intervals.CONFIDENCE) -> dict:
    """The ``intervals`` entry of a summary (docs/statistics.md): {"confidence": c, "certified_accuracy":
    {r: [lo, hi]} (keys as ``certified_accuracy``'s), "clean_accuracy": [lo, hi], "abstain_rate": [lo, hi],
    "acr": [lo, hi]}: exact Clopper-Pearson intervals over the N rows for the fractions
    (``intervals.binomial_interval``), a percentile bootstrap over the rows for ACR (``intervals.mean_interval``,
    fixed seed). With no rows every interval is None."""
    n = int(len(df))
    if n == 0:
        return {"confidence": confidence, "certified_accuracy": {float(r): None for r in radii},
                "clean_accuracy": None, "abstain_rate": None, "acr": None}
    radius = df["radius"].to_numpy(dtype=float)
    correct = df["correct"].to_numpy() == 1
    certified = [int(np.count_nonzero(correct & (radius >= r))) for r in radii]
    lo, hi = intervals.binomial_interval(np.asarray(certified, dtype=float), n, confidence) if radii else ([], [])
    return {
        "confidence": confidence,
        "certified_accuracy": {float(r): [float(a), float(b)] for r, a, b in zip(radii, lo, hi)},
        "clean_accuracy": _pair(intervals.binomial_interval(int(correct.sum()), n, confidence)),
        "abstain_rate": _pair(intervals.binomial_interval(int((df["predict"].to_numpy() == ABSTAIN).sum()), n,
                                                          confidence)),
        "acr": _pair(intervals.mean_interval(np.where(correct, radius, 0.0), confidence)),
    }


def limited_by_counts(df: pd.DataFrame) -> dict[str, int] | None:
    """What limited the radius of the certified rows (predict != ABSTAIN), for methods that write a
    ``limited_by`` column (the finite-set rules' ``lower@k`` / ``upper@k`` counted by kind, the selector's
    ``selector`` / ``classifier`` / ``rival``): {kind: rows}, largest first; None without the column."""
    if "limited_by" not in df.columns:
        return None
    kinds = df.loc[df["predict"] != ABSTAIN, "limited_by"].astype(str).map(lambda value: value.partition("@")[0])
    return {str(kind): int(count) for kind, count in kinds.value_counts().items()}


def summarize_by_guarantee(df: pd.DataFrame, radii: Sequence[float]) -> dict[str, dict]:
    """{guarantee label: summarize(rows with that label)}, labels sorted; never pools two labels
    (ALGORITHMS.md section 3). A frame without a guarantee column is all ``sound`` (Cohen et al.)."""
    if "guarantee" not in df.columns:
        df = df.assign(guarantee="sound")
    labels = df["guarantee"].astype(str)
    return {label: summarize(df[labels == label], radii) for label in sorted(set(labels))}


def summarize_predictions(df: pd.DataFrame, confidence: float = intervals.CONFIDENCE) -> dict:
    """A prediction file's numbers: rows; accuracy (fraction with correct = 1, abstentions wrong); abstain_rate
    (fraction with predict = -1); seconds_per_input; sigma_quantiles; guarantee (as ``summarize``); intervals
    ({"confidence": c, "accuracy": [lo, hi], "abstain_rate": [lo, hi]}, exact Clopper-Pearson over the rows).
    With no rows every fraction and interval is None."""
    n = int(len(df))
    labels = sorted(set(df["guarantee"].astype(str)))
    guarantee = labels[0] if len(labels) == 1 else ("mixed" if labels else None)
    if n == 0:
        return {"rows": 0, "guarantee": guarantee, "accuracy": None, "abstain_rate": None,
                "seconds_per_input": None, "sigma_quantiles": None,
                "intervals": {"confidence": confidence, "accuracy": None, "abstain_rate": None}}
    numbers = summarize(df.assign(radius=0.0), (), confidence)
    return {"rows": n, "guarantee": guarantee, "accuracy": numbers["clean_accuracy"],
            **{key: numbers[key] for key in ("abstain_rate", "seconds_per_input", "sigma_quantiles")},
            "intervals": {"confidence": confidence, "accuracy": numbers["intervals"]["clean_accuracy"],
                          "abstain_rate": numbers["intervals"]["abstain_rate"]}}


def summarize_predictions_by_guarantee(df: pd.DataFrame) -> dict[str, dict]:
    """{guarantee label: summarize_predictions(rows with that label)}, labels sorted; never pools two labels."""
    labels = df["guarantee"].astype(str)
    return {label: summarize_predictions(df[labels == label]) for label in sorted(set(labels))}


def prediction_table(summaries: dict[str, dict], label_header: str = "run", notes: bool = True) -> str:
    """A markdown table with one row per (run label, guarantee): run | guarantee | rows | accuracy | abstain |
    s/input, each fraction with its 95% interval (``value [lo, hi]``). ``summaries`` maps a run label to
    ``summarize_predictions_by_guarantee``'s result. ``notes``: the notes under it (``table_notes``)."""
    head = [label_header, "guarantee", "rows", "accuracy", "abstain", "s/input"]
    lines = ["| " + " | ".join(head) + " |", "|---|---|" + "---:|" * (len(head) - 2)]
    labels = []
    for label, per_guarantee in summaries.items():
        for guarantee, s in per_guarantee.items():
            labels.append(guarantee)
            ci = s.get("intervals") or {}
            lines.append("| " + " | ".join([str(label), str(guarantee), str(int(s["rows"])),
                                            _cell(s["accuracy"], ci.get("accuracy")),
                                            _cell(s["abstain_rate"], ci.get("abstain_rate")),
                                            _fmt_seconds(s["seconds_per_input"])]) + " |")
    return "\n".join(lines) + "\n" + (table_notes(labels, prediction=True) if notes else "")


def _fmt(value) -> str:
    value = _none_if_nan(value)
    return "-" if value is None else f"{float(value):.3f}"


def _cell(value, interval, decimals: int = 3) -> str:
    """``0.667 [0.541, 0.777]``: the value and its interval rounded outward (the printed interval contains the
    computed one); the value alone without an interval, "-" without a value."""
    value = _none_if_nan(value)
    if value is None:
        return "-"
    if interval is None or any(_none_if_nan(v) is None for v in interval):
        return f"{float(value):.{decimals}f}"
    lo, hi = intervals.round_outward(float(interval[0]), float(interval[1]), decimals)
    return f"{float(value):.{decimals}f} [{lo:.{decimals}f}, {hi:.{decimals}f}]"


INTERVAL_NOTE = ("[lo, hi]: 95% interval over the certified inputs of the split (exact Clopper-Pearson for "
                 "fractions, a bootstrap over inputs for ACR; docs/statistics.md).")
INSTANCE_NOTE = ("Rows with guarantee instance are not certificates: each radius is Cohen's radius of the fixed-sigma "
                 "classifier at the sigma the search chose for that input, not of the instance-wise classifier that "
                 "answered (README, Guarantees); their accuracy at r is not certified accuracy.")


def table_notes(labels: Iterable[str], prediction: bool = False) -> str:
    """The notes under a table whose rows carry the guarantee ``labels``: what its intervals are, that rows of
    several guarantees are not to be ranked together (``guarantee_note``), and that ``instance`` rows are not
    certificates (for certification tables; a prediction has no radius)."""
    labels = [str(label) for label in labels]
    text = "\n" + INTERVAL_NOTE + "\n" + guarantee_note(labels)
    if not prediction and "instance" in labels:
        text += "\n" + INSTANCE_NOTE + "\n"
    return text


def markdown_table(summaries: dict[str, dict], radii: Sequence[float], label_header: str = "run",
                   notes: bool = True) -> str:
    """A markdown table with one row per (run label, guarantee): run | guarantee | rows | ACR |
    acc@r for each r | abstain; numbers to 3 decimals with their 95% intervals (``value [lo, hi]``, from the
    summaries' ``intervals``), "-" where undefined; with ``notes``, the notes of ``table_notes`` under it.
    ``summaries`` maps a run label to ``summarize_by_guarantee``'s result ({guarantee: summary}),
    or to a single ``summarize`` result."""
    head = [label_header, "guarantee", "rows", "ACR", *(f"acc@{float(r):g}" for r in radii), "abstain"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * (len(head) - 2)) + "|"]
    labels = []
    for label, value in summaries.items():
        per_guarantee = {value.get("guarantee") or "-": value} if "rows" in value else value
        for guarantee, s in per_guarantee.items():
            labels.append(guarantee)
            ci = s.get("intervals") or {}
            acc = {round(float(k), 9): v for k, v in (s.get("certified_accuracy") or {}).items()}
            acc_ci = {round(float(k), 9): v for k, v in (ci.get("certified_accuracy") or {}).items()}
            cells = [str(label), str(guarantee), str(int(s["rows"])), _cell(s.get("acr"), ci.get("acr")),
                     *(_cell(acc.get(round(float(r), 9)), acc_ci.get(round(float(r), 9))) for r in radii),
                     _cell(s.get("abstain_rate"), ci.get("abstain_rate"))]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n" + (table_notes(labels) if notes else "")


def certified_accuracy_curve(df: pd.DataFrame, max_radius: float | None = None,
                             points: int = 200) -> tuple[list[float], list[float]]:
    """Certified accuracy on a fine grid: ``points`` radii evenly spaced on [0, max_radius], and the
    fraction of rows with correct = 1 and radius >= r at each (ALGORITHMS.md section 5).
    Default max_radius: 1.05 times the largest radius of a correct row (1.0 when there is none),
    so the curve reaches its final value inside the plot."""
    radius = df["radius"].to_numpy(dtype=float)
    correct = df["correct"].to_numpy()
    if max_radius is None:
        certified = radius[(correct == 1) & np.isfinite(radius)]
        top = float(certified.max()) if certified.size else 0.0
        max_radius = 1.05 * top if top > 0 else 1.0
    grid = np.linspace(0.0, float(max_radius), int(points))
    acc = certified_accuracy(radius, correct, grid)
    return [float(r) for r in grid], [float(acc[float(r)]) for r in grid]


def _save_atomic(fig, path: str | Path) -> None:
    """Render with the Agg canvas (no pyplot, no global backend) into memory, then ``write_atomic``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    write_atomic(path, buffer.getvalue())


CERTIFIED_GUARANTEES = ("sound", "memory")  # the labels whose radii are certificates (ALGORITHMS.md section 3)


def curve_band(accuracies, rows: int, confidence: float = intervals.CONFIDENCE) -> tuple[list[float], list[float]]:
    """The exact binomial interval of each point of a certified-accuracy curve over ``rows`` inputs (a point is
    a fraction k / rows): (lows, highs), for the shaded band under a curve."""
    if not rows:
        return [], []
    counts = np.clip(np.rint(np.asarray(accuracies, dtype=float) * rows), 0, rows)
    lo, hi = intervals.binomial_interval(counts, rows, confidence)
    return [float(v) for v in np.atleast_1d(lo)], [float(v) for v in np.atleast_1d(hi)]


def certified_accuracy_figure(curves: dict[str, tuple[list[float], list[float]]], subject: str | None = None,
                              dashed: Iterable[str] = (), guarantees: dict[str, str] | None = None,
                              bands: dict[str, tuple[list[float], list[float]]] | None = None):
    """Certified accuracy (y) against radius (x), one step curve per entry of ``curves`` ({legend label: (radii,
    accuracies)}, e.g. from ``certified_accuracy_curve``), as a matplotlib Figure (Agg canvas, no pyplot),
    titled ``<subject>: certified accuracy`` (``subject``: e.g. the data set; optional).

    ``guarantees`` ({label: guarantee}) sorts the curves into two legend groups: certificates (``sound``,
    ``memory``: solid lines, bands in the line's colour) and the rest (``instance``, or the labels-using
    headroom: dotted lines, grey bands, listed under "not certificates"), and when any curve is not a
    certificate the title and the y axis say so instead of calling the figure certified accuracy. A label
    without a guarantee counts as a certificate. Labels in ``dashed`` (the envelope, the headroom) are dashed,
    black among the certificates and grey among the rest. ``bands`` ({label: (lows, highs)} on the curve's radii) are shaded under the curves."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    guarantees, bands, dashed = dict(guarantees or {}), dict(bands or {}), set(dashed)
    uncertified = [label for label in curves if guarantees.get(label, "sound") not in CERTIFIED_GUARANTEES]
    certified = [label for label in curves if label not in uncertified]
    groups = len([g for g in (certified, uncertified) if g]) if uncertified else 0
    # the legend goes under the axes (long labels name the method, sigma, n and alpha); the figure grows with it
    legend_height = 0.2 * (len(curves) + groups) + 0.3 if curves else 0.0
    fig = Figure(figsize=(7, 4 + legend_height))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    handles, names = [], []
    for heading, labels in (("certificates (sound, memory):", certified),
                            ("not certificates (instance-wise, or using the labels):", uncertified)):
        if groups and labels:
            handles.append(Line2D([], [], linestyle="none"))
            names.append(heading)
        for label in labels:
            radii, acc = curves[label][0], curves[label][1]
            if label in dashed:  # the envelope black, the labels-using headroom grey
                style = {"linestyle": "--", "color": "0.45" if label in uncertified else "black", "linewidth": 1.2}
            elif label in uncertified:
                style = {"linestyle": ":", "linewidth": 1.8}
            else:
                style = {"linestyle": "-"}
            (line,) = ax.plot(radii, acc, drawstyle="steps-post", label=str(label), **style)
            if label in bands and len(bands[label][0]) == len(radii):
                grey = label in uncertified or label in dashed
                ax.fill_between(radii, bands[label][0], bands[label][1], step="post", linewidth=0,
                                alpha=0.15 if grey else 0.2, color="0.5" if grey else line.get_color(),
                                label=f"_band {label}")
            handles.append(line)
            names.append(str(label))
    heading = ("accuracy at radius r (solid: certified; dotted: not certificates)" if uncertified
               else "certified accuracy")
    ax.set_ylabel(heading.split(" (")[0])
    heading += "; bands: 95% intervals" if bands else ""
    ax.set_title(f"{subject}: {heading}" if subject else heading[0].upper() + heading[1:], fontsize="medium")
    ax.set_xlabel("radius (L2)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlim(left=0)
    ax.grid(alpha=0.3)
    if curves:
        fig.legend(handles, names, loc="lower center", fontsize="small", frameon=False)
        fig.subplots_adjust(left=0.1, right=0.97, top=0.93, bottom=(legend_height + 0.55) / (4 + legend_height))
    else:
        fig.tight_layout()
    return fig


def plot_certified_accuracy(curves: dict[str, tuple[list[float], list[float]]], path: str | Path,
                            subject: str | None = None, dashed: Iterable[str] = (),
                            guarantees: dict[str, str] | None = None,
                            bands: dict[str, tuple[list[float], list[float]]] | None = None) -> None:
    """Write ``certified_accuracy_figure(curves, subject, dashed, guarantees, bands)`` as a PNG, atomically
    (temporary file + os.replace). Callers put the guarantee label in the legend label as well."""
    _save_atomic(certified_accuracy_figure(curves, subject, dashed, guarantees, bands), path)


def plot_sigma_histogram(sigmas, path: str | Path, title: str | None = None) -> None:
    """Write ``sigma_histogram_figure(sigmas, title)`` as a PNG, atomically."""
    _save_atomic(sigma_histogram_figure(sigmas, title), path)


def sigma_histogram_figure(sigmas, title: str | None = None):
    """A histogram of the per-input sigmas (finite, positive values) on a linear axis from 0 with plain tick
    labels (0.5, 1, 1.5): one sigma for every input (a fixed-sigma run) is one bar at that sigma, a spread of
    sigmas shows as one. A matplotlib Figure (Agg canvas, no pyplot)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator, ScalarFormatter

    values = np.asarray([s for s in sigmas if s is not None], dtype=float)
    values = values[np.isfinite(values) & (values > 0)]
    fig = Figure(figsize=(6, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if values.size == 0:
        ax.text(0.5, 0.5, "no finite sigma", ha="center", va="center", transform=ax.transAxes)
    else:
        top = 1.1 * float(values.max())
        ax.hist(values, bins=np.linspace(0.0, top, 41))
        ax.set_xlim(0.0, top)
        formatter = ScalarFormatter(useOffset=False)
        formatter.set_scientific(False)
        ax.xaxis.set_major_formatter(formatter)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("sigma")
    ax.set_ylabel("inputs")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


def single_sigma(df: pd.DataFrame) -> float | None:
    """The sigma every row with a finite sigma shares (a fixed-sigma run), None when they differ or none has one."""
    if "sigma" not in df.columns:
        return None
    sigma = df["sigma"].to_numpy(dtype=float)
    sigma = np.unique(sigma[np.isfinite(sigma)])
    return float(sigma[0]) if sigma.size == 1 else None


def curve_label(run: str | None, method: str | None, guarantee: str, sigma: float | None = None,
                levels: Sequence[float] | None = None, n: int | None = None, alpha: float | None = None) -> str:
    """The legend of one certified-accuracy curve, with what is known of how it was certified:
    ``<run>: fixed sigma=0.25 (sound, n=10000, alpha=0.001)``, ``<run>: grid levels=1,0.5,0.25 (sound, n=2000,
    alpha=0.001)``, ``<run>: insta_rs (instance, n=2000, alpha=0.001)``; unknown parts are left out
    (``cohen: sigma=0.25 (sound)``, ``cohen (sound)``)."""
    head = " ".join(part for part in (
        method or "",
        f"sigma={float(sigma):g}" if sigma is not None else "",
        "levels=" + ",".join(f"{float(level):g}" for level in levels) if levels else "") if part)
    details = [str(guarantee), *([f"n={int(n)}"] if n is not None else []),
               *([f"alpha={float(alpha):g}"] if alpha is not None else [])]
    label = f"{run}: {head}" if run and head else (run or head)
    return f"{label} ({', '.join(details)})" if label else f"({', '.join(details)})"


def path_labels(paths: Sequence[str | Path]) -> list[str]:
    """For each path, the shortest end of it (last folder names) that no other path ends with; a certify.tsv
    or predict.tsv stands for its folder, and a .tsv/.txt extension is dropped. An end that is a number (a Hydra multirun's
    job folder, ``<sweep>/0``) keeps its parent folder too: ``12-00-00/0``, not ``0``."""
    parts = []
    for path in paths:
        path = Path(path).resolve()
        if path.name in RUN_FILES:
            path = path.parent
        elif path.suffix.lower() in (".tsv", ".txt"):
            path = path.with_suffix("")
        parts.append([p for p in path.parts if p != path.anchor] or [str(path)])
    labels = []
    for i, mine in enumerate(parts):
        others = [p for j, p in enumerate(parts) if j != i and p != mine]
        depth = next((d for d in range(1, len(mine) + 1) if all(p[-d:] != mine[-d:] for p in others)), len(mine))
        if mine[-depth].isdigit() and depth < len(mine):
            depth += 1
        labels.append("/".join(mine[-depth:]))
    return labels


def guarantee_note(labels: Iterable[str]) -> str:
    """The note printed under a table whose rows carry more than one guarantee label ("" for one label): rows
    of different guarantees are not to be ranked together (ALGORITHMS.md section 3)."""
    labels = sorted(set(str(label) for label in labels), key=_guarantee_rank)
    if len(labels) <= 1:
        return ""
    return (f"\nGuarantees differ between rows ({', '.join(labels)}): rows are grouped by guarantee; compare "
            f"numbers only within one (README, Guarantees).\n")


# ------------------------------------------------------------------------------------------- comparison

GUARANTEE_ORDER = ("sound", "memory", "instance")


def _guarantee_rank(label: str) -> tuple[int, str]:
    return (GUARANTEE_ORDER.index(label) if label in GUARANTEE_ORDER else len(GUARANTEE_ORDER), label)


NUMBER_COLUMNS = ("acr", "clean_accuracy", "abstain_rate")  # beside acc@r: the numbers that carry intervals


def interval_columns(name: str) -> list[str]:
    """A number's column and its interval's: ``acc@0.5``, ``acc@0.5_lo``, ``acc@0.5_hi``."""
    return [name, f"{name}_lo", f"{name}_hi"]


def comparison_columns(radii: Sequence[float]) -> list[str]:
    """The columns of ``comparison_table``, each number followed by its interval's ends."""
    return ["run", "guarantee", "rows", *interval_columns("acr"),
            *(c for r in radii for c in interval_columns(f"acc@{float(r):g}")),
            *interval_columns("clean_accuracy"), *interval_columns("abstain_rate"), "seconds_per_input", "limited_by"]


def comparison_table(runs: Sequence[tuple[str, pd.DataFrame]], radii: Sequence[float]) -> pd.DataFrame:
    """One row per (run, guarantee label) for several runs (ALGORITHMS.md sections 3 and 5): columns run,
    guarantee, rows, acr, ``acc@r`` for each r of ``radii``, clean_accuracy, abstain_rate, each followed by
    the ends of its 95% interval (``<column>_lo``, ``<column>_hi``: ``number_intervals``), seconds_per_input,
    limited_by (e.g. "selector 120, classifier 40"; None for methods without the column), each from
    ``summarize_by_guarantee`` of that run's frame (so the numbers are ``analyze``'s).
    ``runs``: (label, certification frame) pairs. Rows are ordered by guarantee (sound, memory, instance,
    then any other label), then in the order given, so rows of one guarantee stand together and a row never
    sits among rows of another guarantee without its label. Fractions are None where undefined."""
    records = []
    for position, (label, frame) in enumerate(runs):
        for guarantee, s in summarize_by_guarantee(frame, radii).items():
            records.append({"run": label, "guarantee": guarantee, "rows": int(s["rows"]), **_number_cells(s, radii),
                            "seconds_per_input": s["seconds_per_input"],
                            "limited_by": (", ".join(f"{k} {v}" for k, v in s["limited_by"].items())
                                           if s["limited_by"] else None),
                            "_order": (_guarantee_rank(guarantee), position)})
    records.sort(key=lambda record: record.pop("_order"))
    return pd.DataFrame.from_records(records, columns=comparison_columns(radii))


def _number_cells(summary: dict, radii: Sequence[float]) -> dict:
    """{column: value} of a summary's numbers and their intervals' ends (None where undefined)."""
    ci = summary.get("intervals") or {}
    acc = {round(float(r), 9): v for r, v in (summary.get("certified_accuracy") or {}).items()}
    acc_ci = {round(float(r), 9): v for r, v in (ci.get("certified_accuracy") or {}).items()}
    cells = {}
    for name, value, interval in [("acr", summary.get("acr"), ci.get("acr")),
                                  *((f"acc@{float(r):g}", acc.get(round(float(r), 9)), acc_ci.get(round(float(r), 9)))
                                    for r in radii),
                                  ("clean_accuracy", summary.get("clean_accuracy"), ci.get("clean_accuracy")),
                                  ("abstain_rate", summary.get("abstain_rate"), ci.get("abstain_rate"))]:
        cells.update(zip(interval_columns(name), [value, *(interval if interval is not None else (None, None))]))
    return cells


def per_input_matrix(df: pd.DataFrame, radii: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """(idx, values) of a certification frame, sorted by idx (one row per input: a repeated idx keeps its first
    row): values has one column per radius r of ``radii`` (1 where correct and radius >= r), then clean
    (correct), then radius * correct; the column means are acc@r, clean accuracy and ACR."""
    df = df.drop_duplicates("idx").sort_values("idx")
    radius = df["radius"].to_numpy(dtype=float)
    correct = df["correct"].to_numpy() == 1
    columns = [correct & (radius >= r) for r in radii] + [correct, np.where(correct, radius, 0.0)]
    return df["idx"].to_numpy(), np.column_stack(columns).astype(float) if len(df) else np.zeros((0, len(columns)))


def _common(matrices: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, list[np.ndarray]]:
    """The inputs every (idx, values) pair holds, and each pair's values on them, aligned."""
    common = matrices[0][0]
    for idx, _ in matrices[1:]:
        common = np.intersect1d(common, idx)
    return common, [values[np.searchsorted(idx, common)] for idx, values in matrices]


ENVELOPE_LABEL = "envelope (best fixed sigma)"


def fixed_sigma_envelope(runs: Sequence[tuple[str, pd.DataFrame]], radii: Sequence[float]
                         ) -> tuple[dict, dict[float, str]]:
    """The fixed-sigma envelope of several sound fixed-sigma runs: at each radius r of ``radii``,
    the largest certified accuracy among the runs, and which run gave it. Returns (a ``comparison_table``
    record with run = ENVELOPE_LABEL, guarantee ``sound``, acc@r the maxima, clean_accuracy = acc at 0 of the
    run best at 0, acr None: the envelope is not one classifier), {r: label of the run that reaches it; the
    first in the given order on ties}). The runs should certify the same inputs (``rows`` is the largest).
    The intervals (``acc@r_lo``, ...) are ``intervals.envelope_interval``: [max lo, max hi] of the runs' exact
    intervals at the Bonferroni level 1 - 0.05 / (number of runs)."""
    if not runs:
        raise ValueError("runs: the envelope needs at least one sound fixed-sigma run")
    per_run = [(label, certified_accuracy(df["radius"], df["correct"], radii)) for label, df in runs]
    best, sources = {}, {}
    for r in radii:
        label, acc = max(per_run, key=lambda item: item[1][float(r)])  # max keeps the first of equal values
        best[float(r)], sources[float(r)] = acc[float(r)], label
    successes = [[int(((df["correct"] == 1) & (df["radius"] >= r)).sum()) for r in radii] + [int((df["correct"] == 1).sum())]
                 for _, df in runs]
    sizes = [len(df) for _, df in runs]
    lo, hi = intervals.envelope_interval(successes, sizes) if min(sizes) else (None, None)
    record = {"run": ENVELOPE_LABEL, "guarantee": "sound", "rows": max(len(df) for _, df in runs), "acr": None,
              "clean_accuracy": max(float((df["correct"] == 1).mean()) for _, df in runs),
              "abstain_rate": None, "seconds_per_input": None}
    for i, r in enumerate(radii):
        record.update(zip(interval_columns(f"acc@{float(r):g}"),
                          [best[float(r)], *((lo[i], hi[i]) if lo is not None else (None, None))]))
    record.update(zip(["clean_accuracy_lo", "clean_accuracy_hi"], (lo[-1], hi[-1]) if lo is not None else (None, None)))
    return record, sources


HEADROOM_LABEL = "headroom: per-input best fixed sigma (uses the labels)"
HEADROOM_GUARANTEE = "none (uses labels)"


def per_input_best_rows(runs: Sequence[tuple[str, pd.DataFrame]]) -> pd.DataFrame:
    """The headroom above the fixed-sigma envelope, one row per input that every run certified
    (columns idx, radius, correct, predict): the largest radius among the runs that certify it correctly
    (radius 0, correct 0 and predict ABSTAIN if none does). It knows the labels, so it is not a classifier and
    carries no guarantee: it is at most what a rule that answers each input with one of these runs' certificates
    could reach (up to Monte Carlo noise: such a rule draws afresh, and pays for its choice with alpha or radius)."""
    if not runs:
        raise ValueError("runs: the headroom needs at least one sound fixed-sigma run")
    scores = [df.drop_duplicates("idx").set_index("idx").pipe(
        lambda df: df["radius"].astype(float).where(df["correct"] == 1, -np.inf)) for _, df in runs]
    best = pd.concat(scores, axis=1, join="inner").max(axis=1)
    correct = (best > -np.inf).astype(int).to_numpy()
    return pd.DataFrame({"idx": best.index, "radius": best.clip(lower=0.0).to_numpy(), "correct": correct,
                         "predict": np.where(correct == 1, 0, ABSTAIN)})


def per_input_best(runs: Sequence[tuple[str, pd.DataFrame]], radii: Sequence[float]) -> dict:
    """``per_input_best_rows`` as a ``comparison_table`` record: run = HEADROOM_LABEL, guarantee
    HEADROOM_GUARANTEE, rows = the inputs every run certified, acr and acc@r over them with their intervals."""
    rows = per_input_best_rows(runs)
    summary = summarize(rows.assign(guarantee=HEADROOM_GUARANTEE), radii)
    record = {"run": HEADROOM_LABEL, "guarantee": HEADROOM_GUARANTEE, "rows": int(len(rows)),
              **_number_cells(summary, radii), "seconds_per_input": None}
    record.update(abstain_rate=None, abstain_rate_lo=None, abstain_rate_hi=None)
    if not len(rows):
        record["clean_accuracy"] = math.nan
    return record


def envelope_curve(curves: Sequence[tuple[list[float], list[float]]]) -> tuple[list[float], list[float]]:
    """The pointwise maximum of certified-accuracy curves sampled on one grid (``certified_accuracy_curve``
    with the same max_radius and points)."""
    grid = curves[0][0]
    if any(len(radii) != len(grid) or not np.allclose(radii, grid) for radii, _ in curves):
        raise ValueError("curves: the envelope needs curves sampled on one radius grid")
    return list(grid), [float(v) for v in np.max(np.array([acc for _, acc in curves], dtype=float), axis=0)]


def envelope_band(frames: Sequence[pd.DataFrame], grid: Sequence[float]) -> tuple[list[float], list[float]]:
    """The 95% band of the envelope curve of ``frames`` on ``grid`` (``intervals.envelope_interval`` at each
    radius: the Bonferroni union of the frames' exact intervals)."""
    if not frames or not min(len(df) for df in frames):
        return [], []
    successes = [[int(np.count_nonzero((df["correct"].to_numpy() == 1) & (df["radius"].to_numpy(dtype=float) >= r)))
                  for r in grid] for df in frames]
    lo, hi = intervals.envelope_interval(successes, [len(df) for df in frames])
    return [float(v) for v in lo], [float(v) for v in hi]


def _fmt_seconds(value) -> str:
    value = _none_if_nan(value)
    return "-" if value is None else f"{float(value):.3g}"


def comparison_markdown(table: pd.DataFrame, radii: Sequence[float]) -> str:
    """``comparison_table`` as markdown: run | guarantee | rows | ACR | acc@r ... | clean acc | abstain |
    s/input | limited by, fractions to 3 decimals with their 95% intervals (``value [lo, hi]``, rounded
    outward), seconds to 3 significant digits, "-" where undefined; under it the notes of ``table_notes``
    (what the intervals are; guarantees not to be ranked together; ``instance`` rows are not certificates)."""
    acc_columns = [f"acc@{float(r):g}" for r in radii]
    head = ["run", "guarantee", "rows", "ACR", *acc_columns, "clean acc", "abstain", "s/input", "limited by"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * (len(head) - 2)) + "|"]

    def cell(row, column):
        return _cell(row.get(column), (row.get(f"{column}_lo"), row.get(f"{column}_hi")))

    for row in table.to_dict("records"):
        cells = [str(row["run"]).replace("|", "\\|"), str(row["guarantee"]), str(int(row["rows"])), cell(row, "acr"),
                 *(cell(row, c) for c in acc_columns), cell(row, "clean_accuracy"), cell(row, "abstain_rate"),
                 _fmt_seconds(row["seconds_per_input"]),
                 row["limited_by"] if isinstance(row.get("limited_by"), str) else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n" + table_notes(table["guarantee"])


# ------------------------------------------------------------------------------------- paired differences

PAIRING_SHARE = 0.5  # rows pair on their common inputs when these are at least this share of the smaller row's


def difference_columns(radii: Sequence[float]) -> list[str]:
    """The columns of ``difference_record``: the reference, the pairing, then each difference and its interval."""
    return ["reference", "pairing", "paired_inputs", *interval_columns("d_acr"),
            *(c for r in radii for c in interval_columns(f"d_acc@{float(r):g}"))]


def difference_record(row: pd.DataFrame, reference: Sequence[pd.DataFrame], radii: Sequence[float],
                      reference_label: str, confidence: float = intervals.CONFIDENCE) -> dict:
    """The difference of a row from a reference (docs/statistics.md), at every radius of ``radii`` and for ACR:
    ``row``'s acc@r and ACR minus the reference's, where the reference is one frame, or several whose maximum
    (an envelope) is the reference. Paired (``intervals.envelope_difference``, the maximum recomputed in every
    resample) on the inputs the row and every reference frame certified, when these are at least PAIRING_SHARE
    of the smallest one's inputs (a run on a subset of another's inputs pairs on that subset); otherwise unpaired, each side over its own inputs (the reference frames over theirs,
    together). Returns {reference, pairing (in words), paired_inputs (None when unpaired), d_acr, d_acr_lo,
    d_acr_hi, d_acc@r, d_acc@r_lo, d_acc@r_hi ...}."""
    mine = per_input_matrix(row, radii)
    theirs = [per_input_matrix(frame, radii) for frame in reference]
    common, aligned = _common([mine, *theirs])
    sizes = [len(mine[0]), *(len(idx) for idx, _ in theirs)]
    paired = len(common) > 0 and len(common) >= PAIRING_SHARE * min(sizes)
    if paired:
        difference, lo, hi = intervals.envelope_difference(aligned[0], aligned[1:], confidence)
        pairing = (f"paired, {len(common)} inputs" if all(size == len(common) for size in sizes) else
                   f"paired on the {len(common)} common inputs (of {', '.join(str(size) for size in sizes)})")
    else:
        reference_common, members = _common(theirs)
        if not len(mine[0]) or not len(reference_common):
            return {"reference": reference_label, "pairing": "no inputs to compare", "paired_inputs": None}
        difference, lo, hi = intervals.envelope_difference(mine[1], members, confidence, paired=False)
        pairing = f"unpaired: different inputs ({sizes[0]} vs {len(reference_common)})"
    names = [f"d_acc@{float(r):g}" for r in radii] + [None, "d_acr"]  # the clean column is d_acc@0's twin
    record = {"reference": reference_label, "pairing": pairing, "paired_inputs": int(len(common)) if paired else None}
    for name, d, a, b in zip(names, difference, lo, hi):
        if name is not None:
            record.update(zip(interval_columns(name), (float(d), float(a), float(b))))
    return record


def _difference_cell(value, lo, hi, decimals: int = 3) -> str:
    """``**+0.050 [+0.012, +0.088]**`` when the interval excludes 0 (a difference; shown with more places where three would touch 0), ``tie +0.028 [-0.010, +0.066]``
    otherwise; the interval rounded outward."""
    if _none_if_nan(value) is None or _none_if_nan(lo) is None or _none_if_nan(hi) is None:
        return "-"
    low, high = intervals.round_outward(float(lo), float(hi), decimals)
    significant = bool(intervals.excludes_zero(lo, hi))
    while significant and decimals < 6 and (low <= 0 <= high):  # more places until the shown interval excludes 0
        decimals += 1
        low, high = intervals.round_outward(float(lo), float(hi), decimals)
    text = f"{float(value):+.{decimals}f} [{low:+.{decimals}f}, {high:+.{decimals}f}]"
    return f"**{text}**" if significant else f"tie {text}"


def difference_markdown(table: pd.DataFrame, radii: Sequence[float], reference_label: str) -> str:
    """The rows of ``table`` that carry a difference (``difference_columns``) as markdown: run | guarantee |
    inputs | dACR | dacc@r ..., each ``difference [lo, hi]``, in bold when the interval excludes 0 and marked
    ``tie`` otherwise, under a line naming the reference."""
    rows = [row for row in table.to_dict("records") if isinstance(row.get("pairing"), str)]
    if not rows:
        return ""
    head = ["run", "guarantee", "inputs", "dACR", *(f"dacc@{float(r):g}" for r in radii)]
    lines = [f"Differences from {reference_label} (row minus reference; 95% paired bootstrap interval over the "
             f"inputs; bold: the interval excludes 0; tie: it does not):", "",
             "| " + " | ".join(head) + " |", "|---|---|---|" + "---:|" * (len(head) - 3)]
    for row in rows:
        cells = [str(row["run"]).replace("|", "\\|"), str(row["guarantee"]), str(row["pairing"]),
                 _difference_cell(row.get("d_acr"), row.get("d_acr_lo"), row.get("d_acr_hi")),
                 *(_difference_cell(row.get(f"d_acc@{float(r):g}"), row.get(f"d_acc@{float(r):g}_lo"),
                                    row.get(f"d_acc@{float(r):g}_hi")) for r in radii)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def sample_size_advice(table: pd.DataFrame, radii: Sequence[float]) -> str | None:
    """One line on the table's resolution: its widest interval among the fractions (acc@r, clean accuracy,
    abstain rate: exact binomial intervals), and how many inputs would halve that interval's half-width at the
    same observed fraction (``intervals.inputs_to_halve_binomial``); None when no row has an interval."""
    columns = [f"acc@{float(r):g}" for r in radii] + ["clean_accuracy", "abstain_rate"]
    widest = None
    for row in table.to_dict("records"):
        if row.get("run") in (ENVELOPE_LABEL,):  # a maximum, not a fraction of one row's inputs
            continue
        for column in columns:
            value, lo, hi = (_none_if_nan(row.get(c)) for c in interval_columns(column))
            if value is None or lo is None or hi is None or not row.get("rows"):
                continue
            if widest is None or (hi - lo) / 2 > widest[0]:
                widest = ((hi - lo) / 2, row, column, value, lo, hi)
    if widest is None:
        return None
    half, row, column, value, lo, hi = widest
    n = int(row["rows"])
    needed = intervals.inputs_to_halve_binomial(int(round(value * n)), n)
    return (f"Resolution: the widest interval is {column} of {row['run']} ({row['guarantee']}): {_cell(value, (lo, hi))}, "
            f"half-width {half:.3f} over {n} inputs; about {needed} inputs would halve it (to ~{half / 2:.3f}). "
            f"ACR and difference intervals shrink as 1/sqrt(inputs): 4x the inputs halve them.")
