"""The certification file: its columns, the resumable writer, resume checks and the merge of per-rank shards
(ALGORITHMS.md section 6). Every certification run, on one process or many, writes through this module.

- ``CertificationLog`` appends one flushed row at a time, so a killed run loses at most the row it was
  writing; reopening it resumes after the last complete row. The settings a file was made with are stored
  beside it (``<stem>.settings.json``); a resume with other settings is refused, naming the first difference.
- With several ranks each writes ``shards/rank<r>.tsv``; ``merge_shards`` joins ``certify.tsv`` and every
  shard into ``certify.tsv`` (one row per idx, in index order), after checking that rows made twice agree on
  every column but the wall-clock ones.
- Every file is replaced through ``write_atomic``: a reader never sees half of one.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Iterable, Sequence

from .errors import ConfigError, DataError

SHARD_DIR = "shards"


def write_atomic(path: str | Path, content: str | bytes) -> None:
    """Write ``content`` (text or bytes) through a temporary file and a rename, so a reader never sees a
    half-written file. The one atomic writer of the project: files, summaries, tables, figures, checkpoints."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    if isinstance(content, bytes):
        tmp.write_bytes(content)
    else:
        tmp.write_text(content)
    os.replace(tmp, path)


def write_json_atomic(path: str | Path, payload) -> None:
    """``payload`` as indented JSON through ``write_atomic``."""
    write_atomic(path, json.dumps(payload, indent=2, sort_keys=False, default=str) + "\n")


CERTIFY_COLUMNS = ("idx", "label", "predict", "radius", "correct", "time",
                   "sigma", "pA_lower", "guarantee", "search_time", "search_draws")
PREDICT_COLUMNS = ("idx", "label", "predict", "correct", "time", "sigma", "guarantee", "search_time", "search_draws")
"""predict.tsv (``certify.mode=predict``): Cohen et al.'s predict columns first, then the sigma and guarantee label
of each row and the search's share of it, as in certify.tsv."""


def format_value(value) -> str:
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, float):
        if not math.isfinite(value):
            return "nan" if value != value else ("inf" if value > 0 else "-inf")
        return repr(round(value, 10)) if abs(value) >= 1e-6 or value == 0 else f"{value:.6e}"
    return str(value)


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
                raise resume_refused(stored, self.settings, self.path)
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


def resume_refused(stored: dict, wanted: dict, tsv_path: str | Path) -> ConfigError:
    """The refusal of a resume whose settings differ from those the rows in ``tsv_path`` were made with: the first
    difference with both values, ``n=10000: the rows in .../certify.tsv were made with n=20000; rerun with n=20000
    to resume, or choose another hydra.run.dir`` (the entry point adds the config group to the key)."""
    key = first_difference(stored, wanted)
    old, new = _describe(key, _lookup(stored, key)), _describe(key, _lookup(wanted, key))
    made = f"with {old}" if _lookup(stored, key) is not _MISSING else f"without {key}"
    return ConfigError(f"{new}: the rows in {tsv_path} were made {made}; rerun {made} to resume, or choose "
                       f"another hydra.run.dir")


_MISSING = object()


def _describe(key: str, value) -> str:
    """``key=value`` as a user would type it (a string bare, anything else as JSON: null, true, [0.25, 0.5]), or
    ``key unset``."""
    if value is _MISSING:
        return f"{key} unset"
    return f"{key}={value if isinstance(value, str) else json.dumps(value)}"


def _lookup(d, dotted: str):
    for part in dotted.split("."):
        if not isinstance(d, dict) or part not in d:
            return _MISSING
        d = d[part]
    return d


TIME_COLUMNS = ("time", "search_time")
"""Columns that measure wall seconds: the only ones allowed to differ between two certifications of one row."""


def complete_rows(path: str | Path, columns: Sequence[str]) -> dict[int, str]:
    """The complete rows of a certification TSV, ``{idx: line}`` (read-only). A trailing fragment (a line
    without its newline or with the wrong number of fields: a run killed mid-write) and every line after a
    broken one are ignored, as ``CertificationLog`` does. A missing or empty file has no rows; a header other
    than ``columns`` is a DataError."""
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        return {}
    lines = path.read_bytes().split(b"\n")
    header = lines[0].decode().split("\t")
    if tuple(header) != tuple(columns):
        raise DataError(f"{path}: header {header} does not match this version's columns {list(columns)}; "
                        f"choose another hydra.run.dir")
    idx_col = list(columns).index("idx")
    rows: dict[int, str] = {}
    for line in lines[1:-1]:
        text = line.decode()
        fields = text.split("\t")
        if len(fields) != len(columns):
            break
        rows.setdefault(int(fields[idx_col]), text)
    return rows


def check_settings_file(tsv_path: str | Path, settings: dict) -> None:
    """ConfigError when the settings stored beside ``tsv_path`` (``<stem>.settings.json``) differ from
    ``settings`` (read-only; the same rule and message as ``CertificationLog``)."""
    tsv_path = Path(tsv_path)
    stored_path = tsv_path.with_name(tsv_path.stem + ".settings.json")
    if not stored_path.exists():
        return
    stored = json.loads(stored_path.read_text())
    wanted = json.loads(json.dumps(settings, default=str))
    if stored != wanted:
        raise resume_refused(stored, wanted, tsv_path)


def shard_paths(run_dir: str | Path) -> list[Path]:
    """Every shard of ``run_dir`` (any world size), by rank."""
    folder = Path(run_dir) / SHARD_DIR
    paths = [p for p in folder.glob("rank*.tsv") if p.stem[4:].isdigit()] if folder.is_dir() else []
    return sorted(paths, key=lambda p: int(p.stem[4:]))


def shard_path(run_dir: str | Path, rank: int) -> Path:
    return Path(run_dir) / SHARD_DIR / f"rank{int(rank)}.tsv"


def done_indices(tsv_path: str | Path, settings: dict, columns: Sequence[str]) -> set[int]:
    """The idx values already certified in ``tsv_path`` or in any shard beside it, after checking that
    each file was made with ``settings``."""
    tsv_path = Path(tsv_path)
    done: set[int] = set()
    for path in [tsv_path, *shard_paths(tsv_path.parent)]:
        check_settings_file(path, settings)
        done.update(complete_rows(path, columns))
    return done


def todo_indices(indices: Iterable[int], done: set[int]) -> list[int]:
    """The selected indices not done yet, in order, each once."""
    seen, todo = set(done), []
    for idx in (int(i) for i in indices):
        if idx not in seen:
            seen.add(idx)
            todo.append(idx)
    return todo


def merge_shards(tsv_path: str | Path, settings: dict, columns: Sequence[str], selected: Sequence[int],
                 remove_shards: bool = True) -> int:
    """Merge ``tsv_path`` and every shard beside it into ``tsv_path``: one row per idx, sorted by idx.

    Checks (a one-line DataError otherwise): every idx of ``selected`` has a row; two rows of one idx agree
    on every column but ``TIME_COLUMNS`` (the rows are a function of (seed, idx, settings), so a
    disagreement means the files come from different runs). The file is replaced atomically and its
    settings file written; then the shards are removed (unless ``remove_shards`` is false). Returns the
    number of rows in the merged file."""
    tsv_path = Path(tsv_path)
    columns = tuple(columns)
    keep = [i for i, c in enumerate(columns) if c not in TIME_COLUMNS]
    merged: dict[int, str] = {}
    shards = shard_paths(tsv_path.parent)
    for path in [tsv_path, *shards]:
        check_settings_file(path, settings)
        for idx, line in complete_rows(path, columns).items():
            if idx in merged:
                old, new = merged[idx].split("\t"), line.split("\t")
                if [old[i] for i in keep] != [new[i] for i in keep]:
                    column = next(columns[i] for i in keep if old[i] != new[i])
                    raise DataError(f"{path}: input idx={idx} has {column}={new[columns.index(column)]} but another "
                                    f"file of this run has {old[columns.index(column)]}; the shards come from "
                                    f"different runs: choose another hydra.run.dir")
                continue
            merged[idx] = line
    missing = sorted(set(int(i) for i in selected) - set(merged))
    if missing:
        raise DataError(f"{tsv_path}: {len(missing)} of {len(set(selected))} selected inputs have no row after merging "
                        f"{len(shards)} shard(s) (first missing idx={missing[0]}); rerun the same command to resume")
    text = "\t".join(columns) + "\n" + "".join(merged[idx] + "\n" for idx in sorted(merged))
    write_atomic(tsv_path, text)
    settings_path = tsv_path.with_name(tsv_path.stem + ".settings.json")
    if not settings_path.exists():
        write_json_atomic(settings_path, settings)
    if remove_shards:
        for path in shards:
            path.unlink(missing_ok=True)
            path.with_name(path.stem + ".settings.json").unlink(missing_ok=True)
        folder = tsv_path.parent / SHARD_DIR
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
    return len(merged)
