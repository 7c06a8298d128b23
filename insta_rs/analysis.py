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

from .certification_file import write_atomic
from .errors import DataError

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


def summarize(df: pd.DataFrame, radii: Sequence[float]) -> dict:
    """One run's numbers (ALGORITHMS.md section 5), as plain JSON-ready Python values:
    rows; acr; certified_accuracy {r: fraction}; clean_accuracy (fraction with correct = 1, i.e. the
    certified accuracy at r = 0 with abstentions wrong); abstain_rate (fraction with predict = -1);
    seconds_per_input (mean of time over rows with a time; time includes the search); sigma_quantiles
    ({q05, q25, q50, q75, q95} over rows with a finite sigma, else None); guarantee (the rows' label,
    or "mixed" when they carry several: prefer ``summarize_by_guarantee``); limited_by (``limited_by_counts``).
    With no rows every fraction is None."""
    n = int(len(df))
    labels = sorted(set(df["guarantee"].astype(str))) if "guarantee" in df.columns else ["sound"]
    if n == 0:
        return {"rows": 0, "guarantee": labels[0] if len(labels) == 1 else ("mixed" if labels else None),
                "acr": None, "certified_accuracy": {float(r): None for r in radii}, "clean_accuracy": None,
                "abstain_rate": None, "seconds_per_input": None, "sigma_quantiles": None, "limited_by": None}
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


def summarize_predictions(df: pd.DataFrame) -> dict:
    """A prediction file's numbers: rows; accuracy (fraction with correct = 1, abstentions wrong); abstain_rate
    (fraction with predict = -1); seconds_per_input; sigma_quantiles; guarantee (as ``summarize``). With no
    rows every fraction is None."""
    n = int(len(df))
    labels = sorted(set(df["guarantee"].astype(str)))
    guarantee = labels[0] if len(labels) == 1 else ("mixed" if labels else None)
    if n == 0:
        return {"rows": 0, "guarantee": guarantee, "accuracy": None, "abstain_rate": None,
                "seconds_per_input": None, "sigma_quantiles": None}
    numbers = summarize(df.assign(radius=0.0), ())
    return {"rows": n, "guarantee": guarantee, "accuracy": numbers["clean_accuracy"],
            **{key: numbers[key] for key in ("abstain_rate", "seconds_per_input", "sigma_quantiles")}}


def summarize_predictions_by_guarantee(df: pd.DataFrame) -> dict[str, dict]:
    """{guarantee label: summarize_predictions(rows with that label)}, labels sorted; never pools two labels."""
    labels = df["guarantee"].astype(str)
    return {label: summarize_predictions(df[labels == label]) for label in sorted(set(labels))}


def prediction_table(summaries: dict[str, dict], label_header: str = "run") -> str:
    """A markdown table with one row per (run label, guarantee): run | guarantee | rows | accuracy | abstain |
    s/input. ``summaries`` maps a run label to ``summarize_predictions_by_guarantee``'s result."""
    head = [label_header, "guarantee", "rows", "accuracy", "abstain", "s/input"]
    lines = ["| " + " | ".join(head) + " |", "|---|---|" + "---:|" * (len(head) - 2)]
    for label, per_guarantee in summaries.items():
        for guarantee, s in per_guarantee.items():
            lines.append("| " + " | ".join([str(label), str(guarantee), str(int(s["rows"])), _fmt(s["accuracy"]),
                                            _fmt(s["abstain_rate"]), _fmt(s["seconds_per_input"])]) + " |")
    return "\n".join(lines) + "\n"


def _fmt(value) -> str:
    value = _none_if_nan(value)
    return "-" if value is None else f"{float(value):.3f}"


def markdown_table(summaries: dict[str, dict], radii: Sequence[float], label_header: str = "run") -> str:
    """A markdown table with one row per (run label, guarantee): run | guarantee | rows | ACR |
    acc@r for each r | abstain; numbers to 3 decimals, "-" where undefined.
    ``summaries`` maps a run label to ``summarize_by_guarantee``'s result ({guarantee: summary}),
    or to a single ``summarize`` result."""
    head = [label_header, "guarantee", "rows", "ACR", *(f"acc@{float(r):g}" for r in radii), "abstain"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * (len(head) - 2)) + "|"]
    for label, value in summaries.items():
        per_guarantee = {value.get("guarantee") or "-": value} if "rows" in value else value
        for guarantee, s in per_guarantee.items():
            acc = s.get("certified_accuracy") or {}
            lookup = {round(float(k), 9): v for k, v in acc.items()}
            cells = [str(label), str(guarantee), str(int(s["rows"])), _fmt(s.get("acr")),
                     *(_fmt(lookup.get(round(float(r), 9))) for r in radii), _fmt(s.get("abstain_rate"))]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


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


def plot_certified_accuracy(curves: dict[str, tuple[list[float], list[float]]], path: str | Path,
                            title: str | None = None, dashed: Iterable[str] = ()) -> None:
    """Write a PNG of certified accuracy (y) against radius (x), one step curve per entry of
    ``curves`` ({legend label: (radii, accuracies)}, e.g. from ``certified_accuracy_curve``); callers
    put the guarantee label in the legend label, which stands under the axes. Labels in ``dashed`` (the envelope)
    are black dashed. Written atomically (temporary file + os.replace)."""
    from matplotlib.figure import Figure

    # the legend goes under the axes (long labels name the method, sigma, n and alpha); the figure grows with it
    legend_height = 0.2 * len(curves) + 0.3 if curves else 0.0
    fig = Figure(figsize=(7, 4 + legend_height))
    ax = fig.add_subplot()
    dashed = set(dashed)
    for label, (radii, acc) in curves.items():
        style = {"linestyle": "--", "color": "black", "linewidth": 1.2} if label in dashed else {}
        ax.plot(radii, acc, drawstyle="steps-post", label=str(label), **style)
    ax.set_xlabel("radius (L2)")
    ax.set_ylabel("certified accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlim(left=0)
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title)
    if curves:
        fig.legend(*ax.get_legend_handles_labels(), loc="lower center", fontsize="small", frameon=False)
        fig.subplots_adjust(left=0.1, right=0.97, top=0.93, bottom=(legend_height + 0.55) / (4 + legend_height))
    else:
        fig.tight_layout()
    _save_atomic(fig, path)


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
    stands for its folder, and a .tsv/.txt extension is dropped. An end that is a number (a Hydra multirun's
    job folder, ``<sweep>/0``) keeps its parent folder too: ``12-00-00/0``, not ``0``."""
    parts = []
    for path in paths:
        path = Path(path).resolve()
        if path.name == "certify.tsv":
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


def comparison_table(runs: Sequence[tuple[str, pd.DataFrame]], radii: Sequence[float]) -> pd.DataFrame:
    """One row per (run, guarantee label) for several runs (ALGORITHMS.md sections 3 and 5): columns run,
    guarantee, rows, acr, ``acc@r`` for each r of ``radii``, clean_accuracy, abstain_rate, seconds_per_input,
    limited_by (e.g. "selector 120, classifier 40"; None for methods without the column), each from
    ``summarize_by_guarantee`` of that run's frame (so the numbers are ``analyze``'s).
    ``runs``: (label, certification frame) pairs. Rows are ordered by guarantee (sound, memory, instance,
    then any other label), then in the order given, so rows of one guarantee stand together and a row never
    sits among rows of another guarantee without its label. Fractions are None where undefined."""
    records = []
    for position, (label, frame) in enumerate(runs):
        for guarantee, s in summarize_by_guarantee(frame, radii).items():
            acc = {round(float(r), 9): v for r, v in (s["certified_accuracy"] or {}).items()}
            records.append({
                "run": label, "guarantee": guarantee, "rows": int(s["rows"]), "acr": s["acr"],
                **{f"acc@{float(r):g}": acc.get(round(float(r), 9)) for r in radii},
                "clean_accuracy": s["clean_accuracy"], "abstain_rate": s["abstain_rate"],
                "seconds_per_input": s["seconds_per_input"],
                "limited_by": ", ".join(f"{k} {v}" for k, v in s["limited_by"].items()) if s["limited_by"] else None,
                "_order": (_guarantee_rank(guarantee), position),
            })
    columns = ["run", "guarantee", "rows", "acr", *(f"acc@{float(r):g}" for r in radii), "clean_accuracy",
               "abstain_rate", "seconds_per_input", "limited_by"]
    records.sort(key=lambda record: record.pop("_order"))
    return pd.DataFrame.from_records(records, columns=columns)


ENVELOPE_LABEL = "envelope (best fixed sigma)"


def fixed_sigma_envelope(runs: Sequence[tuple[str, pd.DataFrame]], radii: Sequence[float]
                         ) -> tuple[dict, dict[float, str]]:
    """The fixed-sigma envelope of several sound fixed-sigma runs (issue 13): at each radius r of ``radii``,
    the largest certified accuracy among the runs, and which run gave it. Returns (a ``comparison_table``
    record with run = ENVELOPE_LABEL, guarantee ``sound``, acc@r the maxima, clean_accuracy = acc at 0 of the
    run best at 0, acr None: the envelope is not one classifier), {r: label of the run that reaches it; the
    first in the given order on ties}). The runs should certify the same inputs (``rows`` is the largest)."""
    if not runs:
        raise ValueError("runs: the envelope needs at least one sound fixed-sigma run")
    per_run = [(label, certified_accuracy(df["radius"], df["correct"], radii)) for label, df in runs]
    best, sources = {}, {}
    for r in radii:
        label, acc = max(per_run, key=lambda item: item[1][float(r)])  # max keeps the first of equal values
        best[float(r)], sources[float(r)] = acc[float(r)], label
    record = {"run": ENVELOPE_LABEL, "guarantee": "sound", "rows": max(len(df) for _, df in runs), "acr": None,
              **{f"acc@{float(r):g}": best[float(r)] for r in radii},
              "clean_accuracy": max(float((df["correct"] == 1).mean()) for _, df in runs),
              "abstain_rate": None, "seconds_per_input": None}
    return record, sources


HEADROOM_LABEL = "headroom: per-input best fixed sigma (uses the labels)"
HEADROOM_GUARANTEE = "none (uses labels)"


def per_input_best_rows(runs: Sequence[tuple[str, pd.DataFrame]]) -> pd.DataFrame:
    """The headroom above the fixed-sigma envelope (issue 15), one row per input that every run certified
    (columns idx, radius, correct): the largest radius among the runs that certify it correctly (radius 0
    and correct 0 if none does). It knows the labels, so it is not a classifier and carries no guarantee:
    it is at most what a rule that answers each input with one of these runs' certificates could reach (up
    to Monte Carlo noise: such a rule draws afresh, and pays for its choice with alpha or radius)."""
    if not runs:
        raise ValueError("runs: the headroom needs at least one sound fixed-sigma run")
    scores = [df.drop_duplicates("idx").set_index("idx").pipe(
        lambda df: df["radius"].astype(float).where(df["correct"] == 1, -np.inf)) for _, df in runs]
    best = pd.concat(scores, axis=1, join="inner").max(axis=1)
    return pd.DataFrame({"idx": best.index, "radius": best.clip(lower=0.0).to_numpy(),
                         "correct": (best > -np.inf).astype(int).to_numpy()})


def per_input_best(runs: Sequence[tuple[str, pd.DataFrame]], radii: Sequence[float]) -> dict:
    """``per_input_best_rows`` as a ``comparison_table`` record: run = HEADROOM_LABEL, guarantee
    HEADROOM_GUARANTEE, rows = the inputs every run certified, acr and acc@r over them."""
    rows = per_input_best_rows(runs)
    acc = certified_accuracy(rows["radius"], rows["correct"], radii)
    return {"run": HEADROOM_LABEL, "guarantee": HEADROOM_GUARANTEE, "rows": int(len(rows)),
            "acr": average_certified_radius(rows["radius"], rows["correct"]),
            **{f"acc@{float(r):g}": acc[float(r)] for r in radii},
            "clean_accuracy": float(rows["correct"].mean()) if len(rows) else math.nan, "abstain_rate": None,
            "seconds_per_input": None}


def envelope_curve(curves: Sequence[tuple[list[float], list[float]]]) -> tuple[list[float], list[float]]:
    """The pointwise maximum of certified-accuracy curves sampled on one grid (``certified_accuracy_curve``
    with the same max_radius and points)."""
    grid = curves[0][0]
    if any(len(radii) != len(grid) or not np.allclose(radii, grid) for radii, _ in curves):
        raise ValueError("curves: the envelope needs curves sampled on one radius grid")
    return list(grid), [float(v) for v in np.max(np.array([acc for _, acc in curves], dtype=float), axis=0)]


def _fmt_seconds(value) -> str:
    value = _none_if_nan(value)
    return "-" if value is None else f"{float(value):.3g}"


def comparison_markdown(table: pd.DataFrame, radii: Sequence[float]) -> str:
    """``comparison_table`` as markdown: run | guarantee | rows | ACR | acc@r ... | clean acc | abstain |
    s/input | limited by, fractions to 3 decimals, seconds to 3 significant digits, "-" where undefined. When the rows
    carry more than one guarantee label, a note under the table says they are not to be ranked together."""
    acc_columns = [f"acc@{float(r):g}" for r in radii]
    head = ["run", "guarantee", "rows", "ACR", *acc_columns, "clean acc", "abstain", "s/input", "limited by"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * (len(head) - 2)) + "|"]
    for row in table.to_dict("records"):
        cells = [str(row["run"]).replace("|", "\\|"), str(row["guarantee"]), str(int(row["rows"])), _fmt(row["acr"]),
                 *(_fmt(row[c]) for c in acc_columns), _fmt(row["clean_accuracy"]), _fmt(row["abstain_rate"]),
                 _fmt_seconds(row["seconds_per_input"]),
                 row["limited_by"] if isinstance(row.get("limited_by"), str) else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n" + guarantee_note(table["guarantee"])
