"""Files and experiment tracking: the resumable certification TSV, summaries, and W&B.

Named ``tracking`` so it does not shadow the standard library's ``logging``.
The TSV follows ALGORITHMS.md section 6 and is written one flushed row at a time, so a killed run
loses at most the row it was working on; ``CertificationLog`` resumes after the last complete row.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Iterable

from .errors import ConfigError, DataError

CERTIFY_COLUMNS = ("idx", "label", "predict", "radius", "correct", "time",
                   "sigma", "pA_lower", "guarantee", "search_time", "search_draws")


def format_value(value) -> str:
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, float):
        if not math.isfinite(value):
            return "nan" if value != value else ("inf" if value > 0 else "-inf")
        return repr(round(value, 10)) if abs(value) >= 1e-6 or value == 0 else f"{value:.6e}"
    return str(value)


def write_json_atomic(path: str | Path, payload) -> None:
    """Write JSON through a temporary file and a rename, so a reader never sees a half-written file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=False, default=str) + "\n")
    os.replace(tmp, path)


def write_text_atomic(path: str | Path, text: str) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class CertificationLog:
    """An append-only, resumable certification TSV with its settings stored beside it.

    On open: if ``path`` exists, its header must match ``columns`` and the stored settings
    (``<stem>.settings.json``) must equal ``settings``, else the resume is refused with a ConfigError
    naming the first difference. A trailing line without its newline or with the wrong number of
    fields (a run killed mid-write) is cut off and redone. ``done`` holds the idx values already written.
    """

    def __init__(self, path: str | Path, settings: dict, columns: Iterable[str] = CERTIFY_COLUMNS):
        self.path = Path(path)
        self.columns = tuple(columns)
        self.settings_path = self.path.with_name(self.path.stem + ".settings.json")
        self.settings = json.loads(json.dumps(settings, default=str))
        self.done: list[int] = []
        self._check_settings()
        self._recover()
        self._file = open(self.path, "a", encoding="utf-8")
        if self.path.stat().st_size == 0:
            self._file.write("\t".join(self.columns) + "\n")
            self._file.flush()

    def _check_settings(self) -> None:
        if self.settings_path.exists():
            stored = json.loads(self.settings_path.read_text())
            if stored != self.settings:
                key = first_difference(stored, self.settings)
                raise ConfigError(
                    f"{key}: the run in {self.path.parent} was made with {_describe(_lookup(stored, key))}, this command "
                    f"asks for {_describe(_lookup(self.settings, key))}; rerun with the same settings to resume, or choose another "
                    f"hydra.run.dir")
        elif self.path.exists() and self.path.stat().st_size > 0:
            raise ConfigError(f"{self.path} exists without its settings file {self.settings_path.name}; "
                              f"move it away or choose another hydra.run.dir")
        else:
            write_json_atomic(self.settings_path, self.settings)

    def _recover(self) -> None:
        if not self.path.exists():
            self.path.touch()
            return
        data = self.path.read_bytes()
        if not data:
            return
        lines = data.split(b"\n")
        header = lines[0].decode().split("\t")
        if tuple(header) != self.columns:
            raise DataError(f"{self.path}: header {header} does not match this version's columns {list(self.columns)}; "
                            f"choose another hydra.run.dir")
        keep = len(lines[0]) + 1
        idx_col = self.columns.index("idx")
        # lines[-1] is what follows the last newline: empty for a complete file, a fragment otherwise
        for line in lines[1:-1]:
            fields = line.decode().split("\t")
            if len(fields) != len(self.columns):
                break
            self.done.append(int(fields[idx_col]))
            keep += len(line) + 1
        if keep != len(data):
            with open(self.path, "r+b") as f:
                f.truncate(keep)

    def append(self, row: dict) -> None:
        missing = [c for c in self.columns if c not in row]
        if missing:
            raise ValueError(f"certification row lacks columns {missing}")
        self._file.write("\t".join(format_value(row[c]) for c in self.columns) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())
        self.done.append(int(row["idx"]))

    def close(self) -> None:
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def first_difference(a, b, prefix: str = "") -> str:
    """Dotted path of the first key where two nested dicts differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if a.get(key, _MISSING) != b.get(key, _MISSING):
                return first_difference(a.get(key), b.get(key), f"{prefix}{key}.")
    return prefix.rstrip(".") or "settings"


_MISSING = object()


def _describe(value) -> str:
    return "(not set)" if value is _MISSING else repr(value)


def _lookup(d, dotted: str):
    for part in dotted.split("."):
        if not isinstance(d, dict) or part not in d:
            return _MISSING
        d = d[part]
    return d


def log_certification_to_wandb(run_dir: str | Path, summary: dict, curve: tuple[list, list], sigmas: list[float],
                               config: dict, mode: str = "offline", project: str = "insta-rs",
                               group: str | None = None, name: str | None = None) -> None:
    """Log a certification run to W&B under stable names (``cert/acr``, ``cert/acc@0.25``, ...): ACR and
    certified accuracy at each grid radius as scalars, the
    certified-accuracy curve as a line plot, and the per-input sigma histogram. Offline by default
    (the run lands under ``run_dir/wandb``; ``wandb sync`` uploads it later). The run carries ``config``
    (the resolved certification config) and its ``tags``, job type ``certify``, and ``group`` (conf/logger/
    wandb.yaml: the experiment, and the sweep for a multirun job). The same table key ``cert/curve`` in every
    run lets a dashboard chart overlay the runs; ``python -m insta_rs.compare --wandb`` logs one chart with one
    series per run configuration."""
    if mode == "disabled":
        return
    import wandb

    tags = config.get("tags") if isinstance(config, dict) else None
    run = wandb.init(dir=str(run_dir), mode=mode, project=project, group=group, name=name, job_type="certify",
                     config=config, tags=list(tags) if tags else None, reinit="finish_previous")
    try:
        scalars = {"cert/acr": summary["acr"], "cert/clean_accuracy": summary["clean_accuracy"],
                   "cert/abstain_rate": summary["abstain_rate"]}
        for radius, acc in (summary["certified_accuracy"] or {}).items():
            scalars[f"cert/acc@{float(radius):g}"] = acc
        table = wandb.Table(data=[[float(r), float(a)] for r, a in zip(*curve)], columns=["radius", "certified_accuracy"])
        scalars["cert/curve"] = wandb.plot.line(table, "radius", "certified_accuracy",
                                                   title="Certified accuracy vs. radius")
        finite = [s for s in sigmas if s == s]
        if finite:
            scalars["cert/sigma_hist"] = wandb.Histogram(finite)
        run.log(scalars)
        run.summary.update({k: v for k, v in scalars.items() if isinstance(v, (int, float))})
    finally:
        run.finish()


SWEEP_SUFFIX_ENV = "INSTA_RS_SWEEP_SUFFIX"


def sweep_suffix(mode, sweep_dir) -> str:
    """``"/<a>/<b>"`` from the last two parts of a multirun's sweep directory (``outputs/multirun/2025-01-31/
    12-00-00`` -> ``/2025-01-31/12-00-00``), ``""`` for a single run (``mode`` is Hydra's RunMode or its name)."""
    if not str(mode).upper().endswith("MULTIRUN") or not sweep_dir:
        return ""
    parts = [p for p in Path(str(sweep_dir)).parts if p not in ("/", ".")]
    return "/" + "/".join(parts[-2:])


class SweepGroupCallback:
    """A Hydra callback (listed under ``hydra.callbacks`` in conf/logger/wandb.yaml) that puts the sweep into
    the W&B group. At the start of every job it sets the environment variable INSTA_RS_SWEEP_SUFFIX to
    ``sweep_suffix(hydra.mode, hydra.sweep.dir)``, which the logger config appends to the experiment name:
    the jobs of one multirun share the group ``<experiment>/<date>/<time>``, a single run is in ``<experiment>``.
    It is set in the job's own process, so it holds with any launcher. Hydra calls the callback's methods
    by name; this class implements them without importing Hydra (the library does not depend on it)."""

    def on_job_start(self, config, **kwargs) -> None:
        hydra_cfg = config.get("hydra") if hasattr(config, "get") else None
        suffix = sweep_suffix(hydra_cfg.get("mode"), hydra_cfg.sweep.get("dir")) if hydra_cfg is not None else ""
        os.environ[SWEEP_SUFFIX_ENV] = suffix

    def on_run_start(self, config, **kwargs) -> None:
        pass

    def on_run_end(self, config, **kwargs) -> None:
        pass

    def on_multirun_start(self, config, **kwargs) -> None:
        pass

    def on_multirun_end(self, config, **kwargs) -> None:
        pass

    def on_job_end(self, config, job_return=None, **kwargs) -> None:
        pass
