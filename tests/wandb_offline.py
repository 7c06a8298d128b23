"""Reading an offline W&B run (``<dir>/wandb/offline-run-<time>-<id>/run-<id>.wandb``) without W&B's servers:
the file is a LevelDB-style log (a 7-byte header, then 32 KiB blocks of records, each with a 7-byte header:
CRC32, length, type) of protobuf ``Record`` messages (``wandb.proto.wandb_internal_pb2``).

W&B's service may finish writing the file after ``run.finish()`` has returned (seen with wandb 0.31: the file
holds its 7-byte header alone for a moment), so readers wait for the run's ``exit`` record (``wait_complete``)."""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path

BLOCK = 32 * 1024
HEADER = 7  # crc32 (4 bytes), length (2), type (1)
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: str | Path) -> list:
    """The protobuf Records of one ``.wandb`` file, in order."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path}: not a W&B run file"
    pos, pending, out = 7, b"", []
    while pos + HEADER <= len(data):
        space = BLOCK - pos % BLOCK
        if space < HEADER:  # the block's tail is padding
            pos += space
            continue
        length, kind = struct.unpack("<HB", data[pos + 4:pos + 7])
        if length == 0 and kind == 0:  # zero padding
            pos += space
            continue
        chunk = data[pos + HEADER:pos + HEADER + length]
        pos += HEADER + length
        pending = chunk if kind in (FULL, FIRST) else pending + chunk
        if kind in (FULL, LAST):
            record = pb.Record()
            record.ParseFromString(pending)
            out.append(record)
            pending = b""
    return out


def wait_complete(path: str | Path, timeout: float = 30.0) -> list:
    """The records of a ``.wandb`` file once its run's ``exit`` record is written (AssertionError after
    ``timeout`` seconds without it)."""
    deadline = time.monotonic() + timeout
    while True:
        found = records(path)
        if any(record.WhichOneof("record_type") == "exit" for record in found):
            return found
        assert time.monotonic() < deadline, f"{path}: no exit record after {timeout} s"
        time.sleep(0.2)


def offline_runs(run_dir: str | Path) -> list[dict]:
    """Every offline W&B run under ``run_dir/wandb``, oldest first: {id, name, group, job_type, config (the
    last value of each key, nested keys as nested dicts), artifacts [(name, type, [file paths])], folder}."""
    runs = []
    for folder in sorted(Path(run_dir, "wandb").glob("offline-run-*")):
        (run_file,) = folder.glob("run-*.wandb")
        info = {"folder": folder, "id": None, "name": None, "group": None, "job_type": None, "config": {},
                "artifacts": []}
        for record in wait_complete(run_file):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                run = record.run
                info.update(id=run.run_id, name=run.display_name, group=run.run_group, job_type=run.job_type)
                _update_config(info["config"], run.config.update)
            elif kind == "config":
                _update_config(info["config"], record.config.update)
            elif kind == "artifact":
                art = record.artifact
                files = [entry.path for entry in art.manifest.contents]
                info["artifacts"].append((art.name, art.type, files))
        runs.append(info)
    return runs


def _update_config(config: dict, items) -> None:
    """Apply config items: ``key`` for a top-level key, or ``nested_key`` (a path, as W&B writes a custom
    chart's spec under ``_wandb.visualize.<chart key>``) with an empty ``key``."""
    for item in items:
        path = list(item.nested_key) or [item.key]
        node = config
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = json.loads(item.value_json)
