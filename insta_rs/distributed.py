"""Certification through Lightning's ``trainer.predict``, on one rank or many (DDP): the one mechanism.

Each selected input is one row of ALGORITHMS.md section 6, certified with its own generator
``row_generator(seed, idx)`` (see ``insta_rs.certification``), so a row does not depend on which rank
certified it, on the world size, or on which other inputs shared its forward passes: a sharded run
writes the same rows as a single process (only the wall-clock columns ``time``/``search_time`` differ).

How a run goes (``certify_sharded``):

1. Every rank reads which inputs are done: the complete rows of ``certify.tsv`` and of every shard
   ``shards/rank*.tsv`` (from any earlier world size), and takes the rest (``todo``) in index order.
   All ranks read before any of them writes, so they agree on ``todo``.
2. ``ShardSampler`` gives rank r the positions r, r + W, r + 2W, ... of ``todo`` (W ranks). Unlike
   ``DistributedSampler`` it never pads by repeating inputs, so no input is certified twice.
3. ``RowWriter`` (a ``BasePredictionWriter``) appends each batch's rows through a ``CertificationLog``: one
   flushed row at a time, resumable, settings-checked; to ``certify.tsv`` itself on one rank, to
   ``shards/rank{r}.tsv`` on several. A rank that dies loses at most the rows it had not written.
4. After all ranks finish (a barrier), rank 0 merges ``certify.tsv`` and any shards (``merge_shards``).

PREDICT runs (``certify.mode=predict``) go the same way with ``predict.tsv`` in place of ``certify.tsv``.
The library does not import Hydra: the entry point builds the trainer from ``conf/trainer``.
"""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path
from typing import Sequence

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import BasePredictionWriter
from torch.utils.data import DataLoader, Dataset, Sampler

from .certification_file import CertificationLog, complete_rows, done_indices, merge_shards, shard_path, shard_paths, todo_indices


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

    def __init__(self, certifier):
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


class RowWriter(BasePredictionWriter):
    """Appends each batch's rows to ``certify.tsv`` of ``run_dir`` on one rank, to ``shards/rank{r}.tsv`` on
    several (a ``CertificationLog``: flushed per row, resumable, settings-checked). ``progress`` (rank 0
    only) is told about every row that rank writes. After a SIGTERM (a preemption, ``kill``) it stops the run
    once the batch's rows are written, with one line and exit status 1, so a rerun resumes where it stopped."""

    def __init__(self, tsv_path: str | Path, settings: dict | None = None, columns: Sequence[str] = (),
                 progress: "Progress | None" = None):
        super().__init__(write_interval="batch")
        self.tsv_path, self.settings, self.columns, self.progress = Path(tsv_path), settings, tuple(columns), progress
        self.log = None

    def setup(self, trainer, pl_module, stage: str) -> None:
        path = self.tsv_path if trainer.world_size == 1 else shard_path(self.tsv_path.parent, trainer.global_rank)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.log = CertificationLog(path, self.settings, self.columns)

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx,
                           dataloader_idx=0) -> None:
        for row in prediction:
            self.log.append(row)
            if self.progress is not None and trainer.is_global_zero:
                self.progress.advance(row)
        if trainer.received_sigterm:  # Lightning's prediction loop only notes a SIGTERM; stop after this batch
            raise SystemExit(f"certification stopped by SIGTERM; its complete rows are in {self.log.path}: rerun "
                             "the same command to resume")

    def teardown(self, trainer, pl_module, stage: str) -> None:
        if self.log is not None:
            self.log.close()
            self.log = None
        if self.progress is not None:
            self.progress.close()

    def __getstate__(self):  # an open file does not cross a process spawn
        return {**self.__dict__, "log": None}


class Progress:
    """Progress on rank 0: inputs done (resumed rows included), the running certified accuracy at radius 0
    over every row so far (``metric``: its name; PREDICT's rows: plain accuracy), and the ETA. ``resumed`` is
    the number of rows done before and ``resumed_correct`` how many of them were correct. On a terminal, a
    tqdm bar; when stderr is redirected (a file, a pipe, a batch job's log), plain lines instead, one every
    ``PLAIN_EVERY_S`` seconds and one at the end, so the output holds no line of carriage returns."""

    PLAIN_EVERY_S = 30.0

    def __init__(self, total: int, resumed: int, resumed_correct: int, label: str = "certify",
                 metric: str = "cert_acc_r0"):
        self.total, self.rows, self.correct, self.label, self.metric = total, resumed, resumed_correct, label, metric
        self.bar = None
        self.plain = None  # (start time, rows at start, time of the last line) when writing plain lines

    def advance(self, row: dict) -> None:
        if self.bar is None and self.plain is None:
            if sys.stderr.isatty():
                from tqdm import tqdm

                self.bar = tqdm(total=self.total, initial=self.rows, desc=self.label, unit="input",
                                dynamic_ncols=True)
            else:
                self.plain = [time.monotonic(), self.rows, time.monotonic()]
        self.rows += 1
        self.correct += int(row["correct"])
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix({self.metric: f"{self.correct / self.rows:.3f}"})
        elif time.monotonic() - self.plain[2] >= self.PLAIN_EVERY_S or self.rows == self.total:
            self._line()

    def _line(self) -> None:
        """``<label>: <rows>/<total> inputs, <metric> <value>, <elapsed> s, ETA <seconds> s``."""
        start, first, _ = self.plain
        elapsed = time.monotonic() - start
        rate = (self.rows - first) / elapsed if elapsed > 0 else 0.0
        eta = f", ETA {(self.total - self.rows) / rate:.0f} s" if rate > 0 and self.rows < self.total else ""
        print(f"{self.label}: {self.rows}/{self.total} inputs, {self.metric} {self.correct / self.rows:.3f}, "
              f"{elapsed:.0f} s{eta}", file=sys.stderr, flush=True)
        self.plain[2] = time.monotonic()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.plain is not None and self.rows < self.total:  # stopped early (SIGTERM): where it stopped
            self._line()
        self.plain = None


def certify_sharded(certifier, dataset, selected: Sequence[int], tsv_path: str | Path, settings: dict,
                    trainer: pl.Trainer, writer: RowWriter, progress: bool = False) -> bool:
    """Certify ``dataset[idx]`` for every selected idx not done yet (in ``tsv_path`` or any shard) across the
    ranks of ``trainer`` (one or more; built with ``writer`` among its callbacks and
    ``use_distributed_sampler=False``), then merge on rank 0 (``merge_shards``).

    Returns True on the process that holds the merged file (global rank 0), False on the other ranks."""
    tsv_path = Path(tsv_path)
    columns = certifier.columns
    done = done_indices(tsv_path, settings, columns)
    todo = todo_indices(selected, done)
    wanted = {int(i) for i in selected}
    resumed = done & wanted
    if resumed and trainer.is_global_zero:
        print(f"resuming after {len(resumed)} of {len(wanted)} rows in {tsv_path.parent}", flush=True)
    writer.tsv_path, writer.settings, writer.columns = tsv_path, settings, tuple(columns)
    if progress:
        writer.progress = _progress(tsv_path, columns, resumed, todo)
        if trainer.world_size > 1:
            writer.progress.total = writer.progress.rows + len(range(0, len(todo), trainer.world_size))
            writer.progress.label = f"{writer.progress.label} (rank 0's share)"
    # the trainer runs even when nothing is left, so that only global rank 0 merges (ranks started by SLURM
    # or torchrun all reach this point); a rank without inputs skips the predict loop
    with warnings.catch_warnings():
        if not todo:  # a finished run, rerun: nothing to certify is what it asked for
            warnings.filterwarnings("ignore", message="Total length of `DataLoader` across ranks is zero")
        trainer.predict(CertificationModule(certifier), dataloaders=certification_loader(
            dataset, todo, certifier.rows_per_group), return_predictions=False)
    trainer.strategy.barrier("certify_sharded")  # every shard is complete before rank 0 merges
    if trainer.is_global_zero and (trainer.world_size > 1 or shard_paths(tsv_path.parent)):
        merge_shards(tsv_path, settings, columns, selected)
    return trainer.is_global_zero


def _progress(tsv_path: Path, columns, resumed: set[int], todo: list[int]) -> Progress:
    """A Progress that starts from the ``resumed`` rows (selected and already done), counting how many of them
    were correct (a row found in certify.tsv and in a shard counts once)."""
    correct_at = list(columns).index("correct")
    correct: dict[int, bool] = {}
    for path in [tsv_path, *shard_paths(tsv_path.parent)]:
        for idx, line in complete_rows(path, columns).items():
            if idx in resumed:
                correct.setdefault(idx, line.split("\t")[correct_at] == "1")
    return Progress(len(todo) + len(resumed), len(resumed), sum(correct.values()), label=tsv_path.stem,
                    metric="cert_acc_r0" if "radius" in columns else "acc")
