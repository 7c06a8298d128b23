"""Certification sharded across processes (DDP ranks) through Lightning's ``trainer.predict``.

Each selected input is one row of ALGORITHMS.md section 6, certified with its own generator
``row_generator(seed, idx)`` (see ``insta_rs.certification``), so a row does not depend on which rank
certified it, on the world size, or on which other inputs shared its forward passes: a sharded run
writes the same rows as a single process (only the wall-clock columns ``time``/``search_time`` differ).

How a run goes (``certify_sharded``):

1. Every rank reads which inputs are done: the complete rows of ``certify.tsv`` and of every shard
   ``shards/rank*.tsv`` (from any earlier world size), and takes the rest (``todo``) in index order.
   All ranks read before any of them writes (a rank writes only after the process group is up), so
   they agree on ``todo``.
2. ``ShardSampler`` gives rank r the positions r, r + W, r + 2W, ... of ``todo`` (W ranks). Unlike
   ``DistributedSampler`` it never pads by repeating inputs, so no input is certified twice.
3. ``ShardWriter`` (a ``BasePredictionWriter``) appends each batch's rows to ``shards/rank{r}.tsv``
   through a ``CertificationLog``: one flushed row at a time, resumable, settings-checked. A rank that
   dies loses at most the rows it had not written; rerunning resumes.
4. After all ranks finish (a barrier), rank 0 merges ``certify.tsv`` and all shards (``merge_shards``):
   one row per idx in index order, none of the selected inputs missing, duplicates allowed only when
   they agree on every column but the time columns. It rewrites ``certify.tsv`` atomically and then
   removes the shards.

The library does not import Hydra; ``certify.py`` builds the trainer from ``conf/trainer``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Sequence

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import BasePredictionWriter
from torch.utils.data import DataLoader, Dataset, Sampler

from .certification import Certifier
from .errors import ConfigError, DataError
from .tracking import CertificationLog, first_difference, write_json_atomic, write_text_atomic

SHARD_DIR = "shards"
TIME_COLUMNS = ("time", "search_time")
"""Columns that measure wall seconds: the only ones allowed to differ between two certifications of one row."""


# -- reading finished rows -------------------------------------------------------------------------------

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
        key = first_difference(stored, wanted)
        raise ConfigError(f"{key}: the rows in {tsv_path} were made with other settings than this command asks for; "
                          f"rerun with the same settings to resume, or choose another hydra.run.dir")


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


# -- merging ---------------------------------------------------------------------------------------------

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
    write_text_atomic(tsv_path, text)
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


# -- Lightning pieces ------------------------------------------------------------------------------------

def _rank_and_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class ShardSampler(Sampler):
    """Positions ``rank, rank + W, rank + 2W, ...`` of a data set of ``length`` items, where (rank, W) are read
    from ``torch.distributed`` when iterated (so the sampler can be made before the processes start).
    No padding: the shards are disjoint and together hold every position exactly once."""

    def __init__(self, length: int):
        self.length = int(length)

    def _positions(self) -> range:
        rank, world = _rank_and_world()
        return range(rank, self.length, world)

    def __iter__(self):
        return iter(self._positions())

    def __len__(self) -> int:
        return len(self._positions())


class SelectedInputs(Dataset):
    """``dataset[indices[k]]`` for k = 0, 1, ... (items are (x, y, idx) as everywhere in insta_rs.data)."""

    def __init__(self, dataset, indices: Sequence[int]):
        self.dataset, self.indices = dataset, [int(i) for i in indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int):
        x, y, idx = self.dataset[self.indices[k]]
        return x, int(y), int(idx)


def _collate(items):
    """Keep the batch as lists (Certifier.rows takes sequences; Smooth moves inputs to its device)."""
    return [x for x, _, _ in items], [y for _, y, _ in items], [i for _, _, i in items]


def certification_loader(dataset, todo: Sequence[int], rows_per_batch: int) -> DataLoader:
    """A DataLoader over the inputs of ``todo``, sharded by ``ShardSampler`` (use it with a Trainer made with
    ``use_distributed_sampler=False``), ``rows_per_batch`` inputs per batch (the certifier's group size)."""
    data = SelectedInputs(dataset, todo)
    return DataLoader(data, batch_size=max(1, int(rows_per_batch)), sampler=ShardSampler(len(data)),
                      collate_fn=_collate, num_workers=0)


class CertificationModule(pl.LightningModule):
    """A LightningModule whose ``predict_step`` returns the batch's TSV rows (``Certifier.rows``). The base
    model is registered as a submodule, so Lightning puts it on the rank's device, and the ``Smooth`` is
    pointed at that device before predicting."""

    def __init__(self, certifier: Certifier):
        super().__init__()
        self.base_classifier = certifier.smooth.base_classifier
        self.certifier = certifier

    def on_predict_start(self) -> None:
        self.certifier.smooth.device = self.device

    def predict_step(self, batch, batch_idx=0, dataloader_idx=0):
        xs, labels, indices = batch
        return self.certifier.rows(xs, labels, indices)

    def configure_optimizers(self):  # never called: certification does not train
        return None


class ShardWriter(BasePredictionWriter):
    """Appends each batch's rows to ``shards/rank{global_rank}.tsv`` of ``run_dir`` (a ``CertificationLog``:
    flushed per row, resumable, settings-checked). ``on_row(row)`` is called on rank 0 for its own rows."""

    def __init__(self, run_dir: str | Path, settings: dict, columns: Sequence[str], on_row=None):
        super().__init__(write_interval="batch")
        self.run_dir, self.settings, self.columns, self.on_row = Path(run_dir), settings, tuple(columns), on_row
        self.log = None

    def setup(self, trainer, pl_module, stage: str) -> None:
        path = shard_path(self.run_dir, trainer.global_rank)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.log = CertificationLog(path, self.settings, self.columns)

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx,
                           dataloader_idx=0) -> None:
        for row in prediction:
            self.log.append(row)
            if self.on_row is not None and trainer.is_global_zero:
                self.on_row(row)

    def teardown(self, trainer, pl_module, stage: str) -> None:
        if self.log is not None:
            self.log.close()
            self.log = None

    def __getstate__(self):  # an open file does not cross a process spawn
        return {**self.__dict__, "log": None}


def certify_sharded(certifier: Certifier, dataset, selected: Sequence[int], tsv_path: str | Path, settings: dict,
                    make_trainer, on_row=None) -> bool:
    """Certify ``dataset[idx]`` for every selected idx not done yet (in ``tsv_path`` or any shard), sharded
    across the ranks of the trainer that ``make_trainer(callbacks)`` builds (DDP; any world size), then merge
    into ``tsv_path`` on rank 0 (``merge_shards``). ``make_trainer`` must pass ``use_distributed_sampler=False``.

    Returns True on the process that holds the merged file (global rank 0), False on the other ranks."""
    tsv_path = Path(tsv_path)
    columns = certifier.columns
    todo = todo_indices(selected, done_indices(tsv_path, settings, columns))
    # the trainer runs even when nothing is left, so that only global rank 0 merges (ranks started by SLURM
    # or torchrun all reach this point); a rank without inputs skips the predict loop
    writer = ShardWriter(tsv_path.parent, settings, columns, on_row=on_row)
    trainer = make_trainer([writer])
    trainer.predict(CertificationModule(certifier), dataloaders=certification_loader(
        dataset, todo, certifier.rows_per_group), return_predictions=False)
    trainer.strategy.barrier("certify_sharded")  # every shard is complete before rank 0 merges
    if trainer.is_global_zero:
        merge_shards(tsv_path, settings, columns, selected)
    return trainer.is_global_zero
