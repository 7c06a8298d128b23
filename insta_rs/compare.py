"""Compare certification runs: one table and one overlaid curve, rows labelled by what differs between runs.

    python -m insta_rs.compare PATH [PATH ...] [--radii 0,0.25,...] [--dataset imagenet] [--envelope] [--out DIR]
                               [--wandb [MODE]]

Each PATH is one of (any mix):
- a certification run directory (certify.py's run directory: ``certify.tsv`` and, in ``.hydra/config.yaml``,
  the certification config with the ``ckpt_path`` it certified);
- a folder holding such run directories (e.g. a ``certify.py -m`` sweep): every ``certify.tsv`` below it, in
  natural order (``2`` before ``10``);
- a certification TSV: ours, or a file in Cohen et al.'s format (their released files have no extension).

Labels. A run directory's settings are its certification config plus the resolved training config of the
model it certified (``config.yaml`` of the training run, two folders above the checkpoint). Both are
flattened to dotted keys: training keys as they are (``train.sigma``, ``train.loss.name``, ``model._target_``),
the certification's own groups as they are (``certify.n``, ``sigma_search._target_``), its other keys
prefixed ``certify:`` (``certify:seed``). A run is labelled by the keys whose values differ between the runs
(``train.loss=macer, train.sigma=0.5``); a ``name``/``_target_`` key is shown as its group (``train.loss``,
``sigma_search=fixed``: a method by its config name), and options that only some runs have (those of one
loss, search or ``train.method``) only where they differ between runs of the same choice. Seeds label runs
only when nothing else differs. Paths, run directories, logging settings and keys that are interpolations of
others (``trainer.max_epochs: ${train.epochs}``) never do: files without a
config, and runs whose settings do not differ, are labelled by the shortest unique end of their path.

Output: a markdown table (ALGORITHMS.md section 5: certified accuracy on the radius grid, ACR, clean accuracy,
abstain rate, guarantee, seconds per input), one row per (run, guarantee label), rows grouped by guarantee
so rows of different guarantees are never ranked together (``analysis.comparison_table``). The grid is
``--radii``, else ``--dataset``'s standard grid, else ImageNet's when every configured run is on ImageNet and
CIFAR-10's otherwise. ``--out DIR`` writes DIR/compare.md, DIR/compare.csv (the same table, plus each run's
source and its label settings as columns) and DIR/compare.png (one curve per row). ``--wandb`` logs the table
and the curves as one W&B line plot with a series per row (offline by default, under DIR or the current
folder). ``--envelope`` adds the fixed-sigma envelope (``analysis.fixed_sigma_envelope``): at each radius the
best certified accuracy among the sound fixed-sigma runs given, as a row among the sound rows, a dashed curve,
and a note naming the run each value comes from; and the headroom above it (``analysis.per_input_best``): each
input scored by the best of those runs' certificates, which needs the labels (guarantee "none (uses labels)", a
row after all others and a dashed curve). Errors: one line on stderr, exit code 1 for data, 2 for options.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import yaml

from . import analysis
from .analysis import path_labels
from .analyze import parse_radii
from .errors import ConfigError, DataError, InstaRSError

CERTIFY_TSV = "certify.tsv"
CERTIFICATION_GROUPS = ("certify", "sigma_search")  # top-level keys of a certification config kept unprefixed
CERTIFY_PREFIX = "certify:"
SELECTOR_KEYS = ("name", "_target_", "method")  # keys that choose what the options beside them mean
SHORTENED_KEYS = ("name", "_target_")  # shown as their group: train.loss.name=macer -> train.loss=macer
# keys that never label runs: paths, run folders, logging and progress output (seeds: see is_seed)
INCIDENTAL_TOP = ("hydra", "logger", "wandb_run", "callbacks", "tags", "num_workers", "print_config")
INCIDENTAL_LAST = ("ckpt_path", "root", "save_dir", "dirpath", "progress", "download", "enable_progress_bar",
                   "log_every_n_steps", "num_sanity_val_steps")
INCIDENTAL_KEYS = ("certify.batch_size",)  # the certify batch size does not change the statistics


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


_MISSING = _Missing()


@dataclass
class Run:
    """One certification (or prediction) file and, for a run directory, its flattened settings."""

    tsv: Path
    settings: dict[str, Any] | None = None  # None: a file without a config (e.g. Cohen et al.'s)
    derived: set[str] = field(default_factory=set)  # keys whose value is an interpolation of another key
    notes: list[str] = field(default_factory=list)
    predict: bool = False  # a PREDICT file (predict.tsv: no radius)


def flatten(tree, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1, "c": [1, 2]}} -> {"a.b": 1, "a.c": [1, 2]}; lists are values, empty dicts vanish."""
    if not isinstance(tree, dict):
        return {prefix.rstrip("."): tree} if prefix else {}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _load_yaml(path: Path) -> dict | None:
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise DataError(f"{path}: cannot read the run's config ({type(error).__name__}): expected a YAML file "
                        f"written by Hydra") from None
    return loaded if isinstance(loaded, dict) else None


def _interpolated(flat: dict[str, Any]) -> set[str]:
    return {key for key, value in flat.items() if isinstance(value, str) and "${" in value}


def _training_dir(ckpt_path, run_dir: Path) -> Path | None:
    """The training run directory of a checkpoint (``RUN/checkpoints/x.ckpt`` -> ``RUN``); a relative path is
    taken from the folder certify.py ran in (``hydra.runtime.cwd``), else from here."""
    if not isinstance(ckpt_path, str) or not ckpt_path:
        return None
    path = Path(ckpt_path).expanduser()
    candidates = [path] if path.is_absolute() else []
    if not path.is_absolute():
        hydra_cfg = _load_yaml(run_dir / ".hydra" / "hydra.yaml") or {}
        cwd = ((hydra_cfg.get("hydra") or {}).get("runtime") or {}).get("cwd")
        candidates = ([Path(cwd) / path] if cwd else []) + [Path.cwd() / path]
    for candidate in candidates:
        if (candidate.parent.parent / "config.yaml").is_file():
            return candidate.parent.parent
    return None


def read_run_settings(run_dir: Path) -> tuple[dict[str, Any] | None, set[str], list[str]]:
    """(flat settings, derived keys, notes) of a certification run directory; (None, ...) without
    ``.hydra/config.yaml``. Notes say what could not be found (the training config)."""
    certify_cfg = _load_yaml(run_dir / ".hydra" / "config.yaml")
    if certify_cfg is None:
        return None, set(), []
    settings: dict[str, Any] = {}
    derived: set[str] = set()
    notes: list[str] = []
    train_dir = _training_dir(certify_cfg.get("ckpt_path"), run_dir)
    if train_dir is None:
        notes.append(f"{run_dir}: the training config of ckpt_path={certify_cfg.get('ckpt_path')!r} was not found "
                     f"(config.yaml two folders above the checkpoint); labels use the certification settings only")
    else:
        settings.update(flatten(_load_yaml(train_dir / "config.yaml") or {}))
        derived |= _interpolated(flatten(_load_yaml(train_dir / ".hydra" / "config.yaml") or {}))
    experts = (certify_cfg.get("sigma_search") or {}).get("experts")
    if isinstance(experts, dict):  # label by the experts' levels, not by their checkpoint paths
        certify_cfg = {**certify_cfg, "sigma_search": {**certify_cfg["sigma_search"],
                                                       "experts": "levels " + ",".join(f"{float(k):g}" for k in experts)}}
    for key, value in flatten(certify_cfg).items():
        name = key if key.split(".")[0] in CERTIFICATION_GROUPS else CERTIFY_PREFIX + key
        settings[name] = value
        if isinstance(value, str) and "${" in value:
            derived.add(name)
    return settings, derived, notes


def collect_runs(paths: Sequence[str | Path]) -> list[Run]:
    """The certification and prediction files named by ``paths`` (``analysis.run_files``: run folders, folders
    of them, files), with their settings; a command-line mistake (no such path, no run in a folder, a .json or
    .png file) is a ConfigError (exit 2)."""
    runs = []
    for tsv in analysis.run_files(paths):
        settings, derived, notes = (read_run_settings(tsv.parent) if tsv.name in analysis.RUN_FILES
                                    else (None, set(), []))
        runs.append(Run(tsv=tsv, settings=settings, derived=derived, notes=notes,
                        predict=analysis.is_prediction_file(tsv)))
    return runs


def _base_key(key: str) -> str:
    return key[len(CERTIFY_PREFIX):] if key.startswith(CERTIFY_PREFIX) else key


def is_incidental(key: str) -> bool:
    """Paths, run folders, logging and progress settings: they never label runs (paths do, when nothing else
    differs: see ``label_runs``)."""
    base = _base_key(key)
    parts = base.split(".")
    last = parts[-1]
    return (parts[0] in INCIDENTAL_TOP or last in INCIDENTAL_LAST or last.endswith("_dir")
            or last.endswith("_path") or base in INCIDENTAL_KEYS)


def is_seed(key: str) -> bool:
    """Seeds (``seed``, ``dataset.split_seed``, ``certify:seed``): they label runs when nothing else differs."""
    return "seed" in key.rpartition(".")[2]


def _value_text(value) -> str:
    if value is _MISSING:
        return "-"
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_value_text(v) for v in value) + "]"
    return str(value)


def method_name(target: str) -> str:
    """The name a user types for the class ``target`` names: a sigma-selection method's config name (its
    class's ``name``, ``insta_rs.search.finite_set.BestLevelSigma`` -> ``grid``), else the last dotted part
    (``insta_rs.models.SmallCNN`` -> ``SmallCNN``; also for a class that cannot be imported)."""
    import importlib

    module, _, cls_name = str(target).rpartition(".")
    try:
        from .search.base import SigmaMethod

        cls = getattr(importlib.import_module(module), cls_name)
    except Exception:  # not importable here (another version, a missing module): the class's name still reads
        return cls_name or str(target)
    name = getattr(cls, "name", None)
    if isinstance(cls, type) and issubclass(cls, SigmaMethod) and isinstance(name, str) and name != SigmaMethod.name:
        return name
    return cls_name


def _display(key: str, value) -> tuple[str, str]:
    """(shown key, shown value): ``train.loss.name`` -> ``train.loss``; ``x._target_`` -> ``x`` with the
    method's config name or the class's name (``method_name``: ``insta_rs.search.base.FixedSigma`` -> ``fixed``,
    ``insta_rs.models.SmallCNN`` -> ``SmallCNN``)."""
    parent, _, last = key.rpartition(".")
    if last in SHORTENED_KEYS and parent:
        text = _value_text(value)
        return parent, method_name(text) if last == "_target_" else text
    return key, _value_text(value)


def differing_keys(settings: Sequence[dict[str, Any]], derived: set[str] = frozenset()) -> list[str]:
    """The keys that tell the runs apart, in the order they first appear: keys whose values differ between
    the runs, except interpolated (derived) keys and incidental ones (``is_incidental``: paths, logging);
    seeds only if nothing else differs; [] if nothing does. An option that some runs lack, under a
    differing ``name``/``_target_``/``method`` (a choice), is kept only if it differs between runs that make
    the same choice: ``train.loss.k`` labels two MACER runs with different k, not MACER against Gaussian;
    ``train.sigma``, which every run has, is kept whenever it differs."""
    keys = []
    for config in settings:
        keys += [k for k in config if k not in keys]
    values = {k: [repr(c.get(k, _MISSING)) for c in settings] for k in keys}
    differ = [k for k in keys if k not in derived and len(set(values[k])) > 1]
    selectors = [k for k in differ if k.rpartition(".")[2] in SELECTOR_KEYS]
    kept = []
    for key in differ:
        if key not in selectors:
            parents = [s for s in selectors if key.startswith(s.rpartition(".")[0] + ".")]
            if parents and repr(_MISSING) in values[key]:
                groups: dict[tuple, set] = {}
                for i in range(len(settings)):
                    groups.setdefault(tuple(values[p][i] for p in parents), set()).add(values[key][i])
                if all(len(group) == 1 for group in groups.values()):
                    continue
        kept.append(key)
    kept = [k for k in kept if not is_incidental(k)]
    return [k for k in kept if not is_seed(k)] or kept


def _key_rank(key: str) -> tuple:
    """Training method first, then the sigma search, model, data, certification settings, trainer, the rest;
    keys of the certification config's other settings (``certify:``) last."""
    rank = {"train": 0, "sigma_search": 1, "model": 2, "dataset": 3, "certify": 4, "trainer": 5}
    return (key.startswith(CERTIFY_PREFIX), rank.get(_base_key(key).split(".")[0], 6))


def setting_labels(settings: Sequence[dict[str, Any]], derived: set[str] = frozenset()
                   ) -> tuple[list[str], list[dict[str, str]]]:
    """A label per run from the keys that differ (``differing_keys``), ``key=value`` joined by ", " (keys
    missing from a run are left out of its label), and per run the {shown key: shown value} behind it."""
    keys = sorted(differing_keys(settings, derived), key=_key_rank)  # stable: first appearance within a rank
    labels, shown = [], []
    for config in settings:
        pairs = dict(_display(k, config[k]) for k in keys if k in config)
        shown.append(pairs)
        labels.append(", ".join(f"{k}={v}" for k, v in pairs.items()))
    return labels, shown


def _unique(labels: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        out.append(label if seen[label] == 1 else f"{label} #{seen[label]}")
    return out


def label_runs(runs: Sequence[Run]) -> tuple[list[str], list[dict[str, str]]]:
    """Labels for all runs (see the module docstring) and the settings shown in each."""
    fallback = path_labels([run.tsv for run in runs])
    labels, shown = list(fallback), [{} for _ in runs]
    configured = [i for i, run in enumerate(runs) if run.settings is not None]
    if len(configured) >= 2:
        derived = set().union(*(runs[i].derived for i in configured))
        texts, pairs = setting_labels([runs[i].settings for i in configured], derived)
        for i, text, pair in zip(configured, texts, pairs):
            if text:
                labels[i], shown[i] = text, pair
    return _unique(labels), shown


def _dataset_name(settings: dict[str, Any]) -> str | None:
    for prefix in (CERTIFY_PREFIX + "dataset", "dataset"):
        name = settings.get(f"{prefix}.name") or settings.get(f"{prefix}._target_")
        if name:
            return str(name).rsplit(".", 1)[-1].lower()
    return None


def infer_radii(runs: Sequence[Run]) -> tuple[float, ...]:
    """ImageNet's grid when every configured run certifies an ImageNet model, CIFAR-10's otherwise."""
    names = [_dataset_name(run.settings) for run in runs if run.settings is not None]
    if names and all(name is not None and name.startswith("imagenet") for name in names):
        return analysis.radius_grid("imagenet")
    return analysis.radius_grid(None)


@dataclass
class Comparison:
    """The result of ``compare``: the table (analysis.comparison_table plus ``source``, the label settings and
    the differences from the reference as columns), its markdown, the curves ({legend: (radii, accuracies)})
    with their 95% bands and guarantees, the grid, and the PREDICT runs' table (``predictions``)."""

    table: pd.DataFrame
    markdown: str
    curves: dict[str, tuple[list[float], list[float]]]
    radii: tuple[float, ...]
    notes: list[str]
    group: str = "compare"  # the W&B group: the runs' experiment_name when they share one
    bands: dict[str, tuple[list[float], list[float]]] = field(default_factory=dict)
    guarantees: dict[str, str] = field(default_factory=dict)  # curve legend -> guarantee label
    predictions: pd.DataFrame | None = None
    reference: str | None = None  # what the differences are taken from


FIXED_TARGET = "insta_rs.search.base.FixedSigma"
ENVELOPE_NAMES = ("envelope", analysis.ENVELOPE_LABEL)  # what --reference accepts for the envelope


def is_fixed_sigma(run: Run, frame: pd.DataFrame) -> bool:
    """A sound fixed-sigma run: certified with ``sigma_search=fixed`` (its config says so), or a file without
    a config (Cohen et al.'s, or a bare TSV) whose rows all carry ``sound`` and one sigma."""
    if (frame["guarantee"].astype(str) != "sound").any() or len(frame) == 0:
        return False
    if run.settings is not None:
        return run.settings.get("sigma_search._target_") == FIXED_TARGET
    return frame["sigma"].nunique() == 1


def add_envelope(table: pd.DataFrame, runs: Sequence[tuple[str, pd.DataFrame]], radii: Sequence[float]
                 ) -> tuple[pd.DataFrame, str]:
    """The table with the fixed-sigma envelope row after the last sound row, and a note naming the run
    each radius's value comes from."""
    record, sources = analysis.fixed_sigma_envelope(runs, radii)
    sound = table.index[table["guarantee"] == "sound"]
    at = int(sound.max()) + 1 if len(sound) else 0
    row = pd.DataFrame([{column: record.get(column) for column in table.columns}])
    table = pd.concat([table.iloc[:at], row, table.iloc[at:]], ignore_index=True)
    note = (f"{analysis.ENVELOPE_LABEL}: at each radius the best certified accuracy among the {len(runs)} sound "
            f"fixed-sigma rows ({'; '.join(label for label, _ in runs)}); from: "
            + ", ".join(f"r={r:g} {label}" for r, label in sources.items())
            + ". A maximum over rows is biased upward on a fixed sample: every difference from it recomputes the "
              "maximum in each bootstrap resample; its own interval is the Bonferroni union of its rows' exact ones.")
    return table, note


def _row_frames(table: pd.DataFrame, frames: dict[str, pd.DataFrame], fixed) -> list[pd.DataFrame | None]:
    """The rows behind each line of the table: the run's rows of that guarantee, the headroom's per-input rows,
    None for the envelope (a maximum over rows, not rows)."""
    out = []
    for run, guarantee in zip(table["run"], table["guarantee"]):
        if run == analysis.HEADROOM_LABEL:
            out.append(analysis.per_input_best_rows(fixed))
        elif run in frames:
            df = frames[run]
            out.append(df[df["guarantee"].astype(str) == guarantee])
        else:
            out.append(None)
    return out


def choose_reference(table: pd.DataFrame, reference: str | None, envelope: bool) -> int | str | None:
    """Which line of the table the differences are taken from: ``reference`` (a run label, or ``LABEL
    (guarantee)`` for a run with rows of several guarantees; ``envelope`` for the envelope), else the envelope
    with ``envelope``, else the first line; "envelope", a line number, or None for a table of one line.
    An unknown or ambiguous label is a ConfigError naming the choices."""
    if reference is None:
        return "envelope" if envelope else (0 if len(table) > 1 else None)
    if reference in ENVELOPE_NAMES:
        if not envelope:
            raise ConfigError(f"--reference={reference!r} needs --envelope: add --envelope, or name a row")
        return "envelope"
    named = [f"{run} ({guarantee})" for run, guarantee in zip(table["run"], table["guarantee"])]
    matches = [i for i, (run, name) in enumerate(zip(table["run"], named)) if reference in (run, name)]
    if len(matches) == 1:
        return matches[0]
    choices = "; ".join(named if matches == [] else [named[i] for i in matches])
    raise ConfigError(f"--reference={reference!r} {'is ambiguous' if matches else 'names no row'}: expected one of "
                      f"{choices}")


def add_differences(table: pd.DataFrame, frames: list[pd.DataFrame | None], reference: int | str,
                    fixed: Sequence[tuple[str, pd.DataFrame]], radii: Sequence[float]) -> tuple[pd.DataFrame, str]:
    """The table with each line's difference from the reference (``analysis.difference_record``: paired on the
    common inputs, or unpaired, stated) as columns, and the reference's name."""
    if reference == "envelope":
        members, name = [df for _, df in fixed], f"the {analysis.ENVELOPE_LABEL}, recomputed in every resample"
    else:
        members = [frames[reference]]
        name = f"{table['run'][reference]} ({table['guarantee'][reference]})"
    records = []
    for i, frame in enumerate(frames):
        if frame is None or i == reference:
            records.append({})
        else:
            records.append(analysis.difference_record(frame, members, radii, name))
    columns = analysis.difference_columns(radii)
    extra = pd.DataFrame.from_records(records, columns=columns, index=table.index)
    extra["paired_inputs"] = extra["paired_inputs"].astype("Int64")
    return pd.concat([table, extra], axis=1), name


def prediction_rows(runs: Sequence[tuple[str, Run, pd.DataFrame]]) -> pd.DataFrame:
    """One line per (PREDICT run, guarantee): run, guarantee, rows, accuracy and abstain_rate with their 95%
    intervals (``analysis.summarize_predictions``), seconds_per_input, source."""
    records = []
    for label, run, frame in runs:
        for guarantee, s in analysis.summarize_predictions_by_guarantee(frame).items():
            ci = s["intervals"]
            records.append({"run": label, "guarantee": guarantee, "rows": s["rows"],
                            **dict(zip(analysis.interval_columns("accuracy"), [s["accuracy"], *(ci["accuracy"] or (None, None))])),
                            **dict(zip(analysis.interval_columns("abstain_rate"),
                                       [s["abstain_rate"], *(ci["abstain_rate"] or (None, None))])),
                            "seconds_per_input": s["seconds_per_input"], "source": str(run.tsv.resolve())})
    return pd.DataFrame.from_records(records, columns=["run", "guarantee", "rows",
                                                      *analysis.interval_columns("accuracy"),
                                                      *analysis.interval_columns("abstain_rate"),
                                                      "seconds_per_input", "source"])


def compare(paths: Sequence[str | Path], radii: Sequence[float] | None = None, dataset: str | None = None,
            envelope: bool = False, reference: str | None = None) -> Comparison:
    """Read every run, label it, and build the comparison (module docstring). ``envelope``: add the
    fixed-sigma envelope of the sound fixed-sigma runs (a row, a dashed curve and a note naming its runs), and
    take the differences from it; ``reference``: the row the differences are taken from (default: the envelope
    with ``envelope``, else the first row). PREDICT runs get a table of their own."""
    runs = collect_runs(paths)
    all_labels, shown = label_runs(runs)
    predicted = [(label, run, analysis.read_predictions(run.tsv)) for label, run in zip(all_labels, runs) if run.predict]
    certified = [(label, run) for label, run in zip(all_labels, runs) if not run.predict]
    frames = [analysis.read_certification(run.tsv) for _, run in certified]
    notes = [note for run in runs for note in run.notes]
    if radii is None:
        base = analysis.radius_grid(dataset) if dataset is not None else infer_radii(runs)
        radii = analysis.grid_up_to_reach(base, frames) if frames else base
        if frames and len(radii) < len(base):
            notes.append(f"radius grid: 0 to {radii[-1]:g} in steps of {radii[1] - radii[0]:g}: the standard grid up "
                         f"to the largest certified radius of any row, rounded up to the step (--radii sets another)")
    radii = tuple(float(r) for r in radii)
    labels = [label for label, _ in certified]
    table = analysis.comparison_table(list(zip(labels, frames)), radii)
    fixed = [(label, df) for (label, run), df in zip(certified, frames) if is_fixed_sigma(run, df)]
    if envelope:
        if not fixed:
            raise DataError("--envelope: none of the runs is a sound fixed-sigma run (sigma_search=fixed, or a "
                            "Cohen-format file); add the fixed-sigma runs the envelope is taken over")
        table, note = add_envelope(table, fixed, radii)
        table = pd.concat([table, pd.DataFrame([analysis.per_input_best(fixed, radii)])], ignore_index=True)
        notes += [note, f"{analysis.HEADROOM_LABEL}: each input scored by the largest radius among the fixed-sigma "
                        "rows that certify it correctly. It needs the labels: not a classifier and no guarantee, but "
                        "the most a rule answering each input with one of those certificates could reach."]
    chosen = choose_reference(table, reference, envelope) if frames else None
    reference_name = None
    if chosen is not None:
        table, reference_name = add_differences(table, _row_frames(table, dict(zip(labels, frames)), fixed), chosen,
                                                fixed, radii)
    markdown = analysis.comparison_markdown(table, radii) if frames else ""
    markdown += "".join(f"\n{n}\n" for n in notes[-2:]) if envelope else ""
    if reference_name is not None:
        markdown += "\n" + analysis.difference_markdown(table, radii, reference_name)
    sources = {label: str(run.tsv.resolve()) for label, run in certified}
    if envelope:
        sources[analysis.ENVELOPE_LABEL] = "envelope of " + ", ".join(sources[label] for label, _ in fixed)
        sources[analysis.HEADROOM_LABEL] = "per-input best of " + ", ".join(sources[label] for label, _ in fixed)
    settings = dict(zip(all_labels, shown))
    table["source"] = table["run"].map(sources)
    for key in dict.fromkeys(k for pairs in shown for k in pairs):
        table[key] = table["run"].map(lambda label, key=key: settings.get(label, {}).get(key))
    predictions = None
    if predicted:
        predictions = prediction_rows(predicted)
        markdown += ("\n" if markdown else "") + "PREDICT runs (no radius: accuracy and abstain rate):\n\n" \
            + analysis.prediction_table({label: analysis.summarize_predictions_by_guarantee(df)
                                         for label, _, df in predicted})
    advice = analysis.sample_size_advice(table, radii) if frames else None
    if advice:
        markdown += "\n" + advice + "\n"
    curves, bands, guarantees = comparison_curves(certified, frames, fixed, envelope)
    experiments = {run.settings.get("experiment_name", run.settings.get(CERTIFY_PREFIX + "experiment_name"))
                   for run in runs if run.settings is not None}
    group = next(iter(experiments)) if len(experiments) == 1 and None not in experiments else "compare"
    return Comparison(table=table, markdown=markdown, curves=curves, radii=radii, notes=notes, group=group,
                      bands=bands, guarantees=guarantees, predictions=predictions, reference=reference_name)


def comparison_curves(certified: Sequence[tuple[str, Run]], frames: Sequence[pd.DataFrame],
                      fixed: Sequence[tuple[str, pd.DataFrame]], envelope: bool):
    """({legend: (radii, accuracies)}, {legend: 95% band}, {legend: guarantee}) for the figure: one curve per
    (run, guarantee) on one fine grid, and with ``envelope`` the envelope's and the headroom's."""
    top = max((float(df.loc[df["correct"] == 1, "radius"].max()) for df in frames if (df["correct"] == 1).any()),
              default=0.0)
    max_radius = 1.05 * top if top > 0 else 1.0
    curves, bands, guarantees = {}, {}, {}
    for (label, run), df in zip(certified, frames):
        labels = df["guarantee"].astype(str)
        for guarantee in sorted(set(labels), key=analysis._guarantee_rank):
            rows = df[labels == guarantee]
            legend = curve_legend(label, run, rows, guarantee)
            curves[legend] = analysis.certified_accuracy_curve(rows, max_radius=max_radius)
            bands[legend] = analysis.curve_band(curves[legend][1], len(rows))
            guarantees[legend] = guarantee
    if envelope:
        legend = f"{analysis.ENVELOPE_LABEL} (sound)"
        curves[legend] = analysis.envelope_curve(
            [analysis.certified_accuracy_curve(df, max_radius=max_radius) for _, df in fixed])
        bands[legend] = analysis.envelope_band([df for _, df in fixed], curves[legend][0])
        guarantees[legend] = "sound"
        headroom = analysis.per_input_best_rows(fixed)
        curves[analysis.HEADROOM_LABEL] = analysis.certified_accuracy_curve(headroom, max_radius=max_radius)
        bands[analysis.HEADROOM_LABEL] = analysis.curve_band(curves[analysis.HEADROOM_LABEL][1], len(headroom))
        guarantees[analysis.HEADROOM_LABEL] = analysis.HEADROOM_GUARANTEE
    return curves, bands, guarantees


def curve_legend(label: str, run: Run, rows: pd.DataFrame, guarantee: str) -> str:
    """``<label>: <method> sigma=... (<guarantee>, n=..., alpha=...)`` (``analysis.curve_label``): the method by
    its config name, its sigma (the one the model was trained with for ``sigma: null``) or its levels, and
    the certification's n and alpha, as far as the run's settings say; a file without settings gives the
    sigma its rows share, if any."""
    settings = run.settings or {}
    target = settings.get("sigma_search._target_")
    sigma = settings.get("sigma_search.sigma")
    if target is not None and target.endswith(".FixedSigma") and sigma is None:
        trained = settings.get("train.sigma")
        sigma = trained if isinstance(trained, (int, float)) and not isinstance(trained, bool) else None
    if run.settings is None or (sigma is None and target is None):
        sigma = analysis.single_sigma(rows)
    levels = settings.get("sigma_search.levels")
    return analysis.curve_label(label, method_name(target) if target else None, guarantee, sigma=sigma,
                                levels=levels if isinstance(levels, list) else None,
                                n=settings.get("certify.n"), alpha=settings.get("certify.alpha"))


CSV_DECIMALS = 6


def csv_table(result: Comparison) -> pd.DataFrame:
    """compare.csv's table: the comparison's lines, then the PREDICT runs' (a ``mode`` column tells them apart),
    numbers to CSV_DECIMALS places: an interval's ends rounded outward (``_lo`` down, ``_hi`` up) so the
    written interval contains the computed one, ACR down (it is a mean of radii), the rest to the nearest."""
    table = result.table.assign(mode="certify")
    if result.predictions is not None:
        table = pd.concat([table, result.predictions.assign(mode="predict")], ignore_index=True)
    scale = 10.0 ** CSV_DECIMALS
    for column in table.columns:
        values = pd.to_numeric(table[column], errors="coerce") if table[column].dtype == object else table[column]
        if column in ("rows", "paired_inputs") or not pd.api.types.is_float_dtype(values) \
                or values.notna().sum() != table[column].notna().sum():
            continue
        if column.endswith("_lo"):
            table[column] = np.floor(values * scale) / scale
        elif column.endswith("_hi"):
            table[column] = np.ceil(values * scale) / scale
        elif column in ("acr",):
            table[column] = np.floor(values * scale) / scale
        else:
            table[column] = values.round(CSV_DECIMALS)
    return table


def write_outputs(result: Comparison, out: str | Path) -> list[Path]:
    """DIR/compare.md, DIR/compare.csv (``csv_table``) and, when there are curves, DIR/compare.png, atomically."""
    from .certification_file import write_atomic

    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(f"--out={str(out)!r} cannot be created ({error.strerror}): expected a writable folder") from None
    write_atomic(out / "compare.md", result.markdown)
    write_atomic(out / "compare.csv", csv_table(result).to_csv(index=False))
    written = [out / "compare.md", out / "compare.csv"]
    if result.curves:
        analysis.plot_certified_accuracy(result.curves, out / "compare.png", guarantees=result.guarantees,
                                         bands=result.bands,
                                         dashed=[label for label in result.curves
                                                 if label.startswith((analysis.ENVELOPE_LABEL, analysis.HEADROOM_LABEL))])
        written.append(out / "compare.png")
    return written


def log_comparison_to_wandb(result: Comparison, run_dir: str | Path, mode: str = "offline",
                            project: str = "insta-rs", group: str | None = None) -> str:
    """Log the comparison as one W&B run (job type ``compare``): the table as ``compare/table`` and the
    certified-accuracy curves as one line plot ``compare/curve`` with one series per (run, guarantee)
    row (``wandb.plot.line_series``). Offline by default: the run lands under ``run_dir/wandb``. Returns where
    the run is: its URL online, its folder offline (``wandb_location``)."""
    import wandb

    first = next(iter(result.curves.values()), ([], []))
    xs = [float(r) for r in first[0]]
    frame = csv_table(result)
    table = frame.astype(object).where(frame.notna(), None)
    run = wandb.init(dir=str(run_dir), mode=mode, project=project, group=group, job_type="compare",
                     config={"radii": list(result.radii), "sources": sorted(set(frame["source"].dropna())),
                             "reference": result.reference},
                     reinit="finish_previous")
    try:
        logged = {"compare/table": wandb.Table(dataframe=table)}
        if result.curves:
            uncertified = any(g not in analysis.CERTIFIED_GUARANTEES for g in result.guarantees.values())
            logged["compare/curve"] = wandb.plot.line_series(
                xs=xs, ys=[list(acc) for _, acc in result.curves.values()], keys=list(result.curves),
                title="Accuracy at radius r (instance rows are not certificates)" if uncertified
                else "Certified accuracy", xname="radius (L2)")
        run.log(logged)
        location = wandb_location(run, mode)
    finally:
        run.finish()
    return location


def wandb_location(run, mode: str) -> str:
    """Where a W&B run is, for the console: ``wandb: <url>`` online; offline, its run folder and the command
    that uploads it."""
    url = getattr(run, "url", None) if mode == "online" else None
    if url:
        return f"wandb: {url}"
    folder = Path(run.dir).resolve().parent  # run.dir is <folder>/files
    return f"wandb: offline run in {folder} (upload with: wandb sync {folder})"


def main(argv: list[str] | None = None) -> int:
    """The command line; returns the exit code (0, or the InstaRSError's: 1 data, 2 options)."""
    parser = argparse.ArgumentParser(prog="python -m insta_rs.compare",
                                     description="One table and one overlaid certified-accuracy curve for several "
                                                 "certification runs, labelled by the settings that differ.")
    parser.add_argument("paths", nargs="+", metavar="PATH",
                        help="certification or PREDICT run directories, folders of them, or their TSV files")
    parser.add_argument("--radii", default=None, help="comma-separated radius grid, e.g. 0,0.25,0.5 (default: the "
                                                      "standard grid up to the largest certified radius, rounded up "
                                                      "to its step)")
    parser.add_argument("--dataset", default=None,
                        help="standard grid for this data set: imagenet* -> 0,0.5,...,3.5, else 0,0.25,...,2.25")
    parser.add_argument("--out", default=None, metavar="DIR", help="write compare.md, compare.csv, compare.png here")
    parser.add_argument("--envelope", action="store_true",
                        help="add the fixed-sigma envelope: at each radius the best certified accuracy among the "
                             "sound fixed-sigma runs given (a row, a dashed curve, and a note naming its runs)")
    parser.add_argument("--reference", default=None, metavar="LABEL",
                        help="the row the differences are taken from: a run label as printed (or 'LABEL (guarantee)'),"
                             " or 'envelope' (the default with --envelope; else the first row)")
    parser.add_argument("--wandb", nargs="?", const="offline", default=None, metavar="MODE",
                        help="log the table and curves to W&B (MODE: offline, the default, or online)")
    parser.add_argument("--wandb-project", default="insta-rs", help="W&B project (default insta-rs)")
    args = parser.parse_args(argv)
    try:
        if args.wandb is not None and args.wandb not in ("offline", "online"):
            raise ConfigError(f"--wandb={args.wandb!r} is invalid: expected offline or online")
        radii = parse_radii(args.radii) if args.radii is not None else None
        result = compare(args.paths, radii=radii, dataset=args.dataset, envelope=args.envelope,
                         reference=args.reference)
        written = write_outputs(result, args.out) if args.out is not None else []
        location = None
        if args.wandb is not None:
            location = log_comparison_to_wandb(result, args.out or ".", mode=args.wandb, project=args.wandb_project,
                                               group=result.group)
    except InstaRSError as error:
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        return error.exit_code
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    print(result.markdown, end="")
    if written:
        print(f"wrote {', '.join(p.name for p in written)} in {args.out}")
    if location:
        print(location)
    return 0


if __name__ == "__main__":
    sys.exit(main())
